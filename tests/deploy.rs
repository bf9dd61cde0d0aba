//! deploy/ and docker-compose.yml, checked as the tools that read them would:
//! every manifest of deploy/ reads field for field as its k8s-openapi type,
//! the CRDs' schemas are structural, they cover every Knative kind pilotlight
//! loads, and the example manifests pass them under Kubernetes' validation
//! rules while a typo does not; kustomization.yaml and docker-compose.yml
//! name files that exist.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, JSONSchemaProps,
    JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use pilotlight::api::kinds::KINDS;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The documents of a YAML file, comment-only ones left out.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()));
    documents.into_iter().filter(|d| !d.is_null()).collect()
}

/// The `.yaml` files under `dir`, sorted, subfolders included.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// A CRD as its file holds it and as k8s-openapi reads it.
struct Crd {
    file: PathBuf,
    raw: Value,
    crd: CustomResourceDefinition,
}

fn crds() -> Vec<Crd> {
    let files = yaml_files(&repo().join("deploy/crds"));
    assert!(!files.is_empty(), "deploy/crds has no CRD");
    files
        .into_iter()
        .map(|file| {
            let mut docs = documents(&file);
            assert_eq!(docs.len(), 1, "{}: one CRD per file", file.display());
            let raw = docs.remove(0);
            let crd: CustomResourceDefinition = serde_json::from_value(raw.clone())
                .unwrap_or_else(|e| panic!("{}: not a CRD: {e}", file.display()));
            Crd { file, raw, crd }
        })
        .collect()
}

/// Differences between two JSON values, numbers compared by value (the file
/// says `minimum: 0`, k8s-openapi writes `0.0`).
fn differences(path: &str, left: &Value, right: &Value, out: &mut Vec<String>) {
    match (left, right) {
        (Value::Object(l), Value::Object(r)) => {
            for key in l.keys().chain(r.keys()).collect::<BTreeSet<_>>() {
                match (l.get(key), r.get(key)) {
                    (Some(a), Some(b)) => differences(&format!("{path}.{key}"), a, b, out),
                    _ => out.push(format!("{path}.{key}")),
                }
            }
        }
        (Value::Array(l), Value::Array(r)) if l.len() == r.len() => {
            for (i, (a, b)) in l.iter().zip(r).enumerate() {
                differences(&format!("{path}[{i}]"), a, b, out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        _ => out.push(path.to_owned()),
    }
}

#[test]
fn every_crd_is_read_field_for_field_and_has_status_and_printer_columns() {
    for Crd { file, raw, crd } in crds() {
        // k8s-openapi skips fields it does not know: a misspelled key
        // (x-kubernetes-preserve-unkown-fields) shows when written back.
        let unknown = unknown_fields(&raw);
        assert!(
            unknown.is_empty(),
            "{}: keys that are not CRD fields: {unknown:?}",
            file.display()
        );
        let spec = &crd.spec;
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some(format!("{}.{}", spec.names.plural, spec.group).as_str()),
            "{}",
            file.display()
        );
        assert_eq!(
            spec.versions.iter().filter(|v| v.storage).count(),
            1,
            "{}: one storage version",
            file.display()
        );
        for version in &spec.versions {
            let at = format!("{} {}", file.display(), version.name);
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{at}: status subresource"
            );
            let columns: Vec<&str> = version
                .additional_printer_columns
                .iter()
                .flatten()
                .map(|c| c.name.as_str())
                .collect();
            // A RabbitmqBrokerConfig is only read: it has no Ready condition.
            if spec.names.kind != "RabbitmqBrokerConfig" {
                assert!(
                    columns.contains(&"Ready") && columns.contains(&"Reason"),
                    "{at}: {columns:?}"
                );
            }
        }
    }
}

/// Why a schema is not structural, in Kubernetes' words: every node has a
/// type (but int-or-string and preserve-unknown-fields nodes), no node has
/// both properties and additionalProperties, arrays have one items schema,
/// no $ref or other keywords the API server refuses, and logical junctors
/// (allOf, anyOf, oneOf, not) only add value validations.
fn structural_errors(schema: &JSONSchemaProps, path: &str, out: &mut Vec<String>) {
    let int_or_string = schema.x_kubernetes_int_or_string == Some(true);
    let preserve = schema.x_kubernetes_preserve_unknown_fields == Some(true);
    if schema.type_.is_none() && !int_or_string && !preserve {
        out.push(format!("{path}: no type"));
    }
    if int_or_string && schema.type_.is_some() {
        out.push(format!("{path}: int-or-string with a type"));
    }
    if schema.properties.is_some() && schema.additional_properties.is_some() {
        out.push(format!("{path}: both properties and additionalProperties"));
    }
    let refused = [
        ("$ref", schema.ref_path.is_some()),
        ("$schema", schema.schema.is_some()),
        ("id", schema.id.is_some()),
        ("definitions", schema.definitions.is_some()),
        ("dependencies", schema.dependencies.is_some()),
        ("additionalItems", schema.additional_items.is_some()),
        ("patternProperties", schema.pattern_properties.is_some()),
    ];
    for (keyword, _) in refused.iter().filter(|(_, set)| *set) {
        out.push(format!("{path}: {keyword} is not allowed"));
    }
    for (name, property) in schema.properties.iter().flatten() {
        structural_errors(property, &format!("{path}.{name}"), out);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &schema.additional_properties {
        structural_errors(values, &format!("{path}.*"), out);
    }
    match (&schema.items, schema.type_.as_deref()) {
        (Some(JSONSchemaPropsOrArray::Schema(items)), _) => {
            structural_errors(items, &format!("{path}[]"), out)
        }
        (Some(JSONSchemaPropsOrArray::Schemas(_)), _) => {
            out.push(format!("{path}: items must be one schema"))
        }
        (None, Some("array")) => out.push(format!("{path}: array without items")),
        (None, _) => {}
    }
    let junctors = [&schema.all_of, &schema.any_of, &schema.one_of];
    let nested = junctors
        .into_iter()
        .flatten()
        .flatten()
        .chain(schema.not.as_deref());
    for inner in nested {
        if inner.type_.is_some()
            || inner.description.is_some()
            || inner.default.is_some()
            || inner.additional_properties.is_some()
            || inner.nullable.is_some()
        {
            out.push(format!(
                "{path}: allOf/anyOf/oneOf/not may only add value validations"
            ));
        }
    }
}

/// The OpenAPI schema of one version of a CRD.
fn schema_of<'a>(file: &Path, version: &'a CustomResourceDefinitionVersion) -> &'a JSONSchemaProps {
    version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .unwrap_or_else(|| panic!("{} {}: no schema", file.display(), version.name))
}

#[test]
fn every_crd_schema_is_structural() {
    for Crd { file, crd, .. } in crds() {
        for version in &crd.spec.versions {
            let schema = schema_of(&file, version);
            let mut errors = Vec::new();
            structural_errors(schema, "", &mut errors);
            // The API server fixes metadata's schema itself.
            let metadata = schema.properties.as_ref().and_then(|p| p.get("metadata"));
            if metadata.is_some_and(|m| m.properties.is_some()) {
                errors.push(".metadata: only type: object is allowed".into());
            }
            assert!(
                errors.is_empty(),
                "{} {}: {errors:?}",
                file.display(),
                version.name
            );
        }
    }
}

#[test]
fn the_crds_cover_every_knative_kind_the_manifest_loader_knows() {
    let served: BTreeSet<(String, String)> = crds()
        .iter()
        .flat_map(|Crd { crd, .. }| {
            crd.spec.versions.iter().filter(|v| v.served).map(|v| {
                (
                    format!("{}/{}", crd.spec.group, v.name),
                    crd.spec.names.kind.clone(),
                )
            })
        })
        .collect();
    // Core kinds (ConfigMap, Secret) have an apiVersion without a group.
    let known: BTreeSet<(String, String)> = KINDS
        .iter()
        .flat_map(|k| k.api_versions.iter().map(move |v| (*v, k.kind)))
        .filter(|(api_version, _)| api_version.contains('/'))
        .map(|(api_version, kind)| (api_version.to_string(), kind.to_string()))
        .collect();
    assert_eq!(served, known);
}

/// A CRD version's schema as JSON Schema (draft 4) under Kubernetes' rules:
/// an object refuses fields its schema does not name unless it says
/// x-kubernetes-preserve-unknown-fields (kubectl's strict field validation),
/// int-or-string takes an integer or a string, and metadata is left to the
/// API server; nullable lets null through.
fn as_json_schema(schema: &JSONSchemaProps) -> Value {
    let mut root = kubernetes_rules(serde_json::to_value(schema).expect("serializes"));
    root["properties"]["metadata"] = json!({"type": "object"});
    root
}

fn kubernetes_rules(mut node: Value) -> Value {
    let Some(map) = node.as_object_mut() else {
        return node;
    };
    let preserve = map.remove("x-kubernetes-preserve-unknown-fields") == Some(json!(true));
    if map.remove("x-kubernetes-int-or-string") == Some(json!(true)) {
        map.insert(
            "anyOf".into(),
            json!([{"type": "integer"}, {"type": "string"}]),
        );
    }
    if map.remove("nullable") == Some(json!(true))
        && let Some(Value::String(ty)) = map.get("type")
    {
        let ty = ty.clone();
        map.insert("type".into(), json!([ty, "null"]));
    }
    map.retain(|key, _| !key.starts_with("x-kubernetes-"));
    if map.get("type") == Some(&json!("object"))
        && !preserve
        && !map.contains_key("additionalProperties")
    {
        map.insert("additionalProperties".into(), json!(false));
    }
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        for value in properties.values_mut() {
            *value = kubernetes_rules(value.take());
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(value) = map.get_mut(key) {
            *value = kubernetes_rules(value.take());
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(list)) = map.get_mut(key) {
            for value in list {
                *value = kubernetes_rules(value.take());
            }
        }
    }
    node
}

/// The validators of every served (apiVersion, kind).
struct Schemas(Vec<(String, String, jsonschema::Validator)>);

impl Schemas {
    fn load() -> Schemas {
        let mut all = Vec::new();
        for Crd { file, crd, .. } in crds() {
            for version in &crd.spec.versions {
                let schema = schema_of(&file, version);
                let validator = jsonschema::draft4::new(&as_json_schema(schema))
                    .unwrap_or_else(|e| panic!("{} {}: {e}", file.display(), version.name));
                all.push((
                    format!("{}/{}", crd.spec.group, version.name),
                    crd.spec.names.kind.clone(),
                    validator,
                ));
            }
        }
        Schemas(all)
    }

    fn validator(&self, object: &Value) -> Option<&jsonschema::Validator> {
        let (api_version, kind) = (object["apiVersion"].as_str()?, object["kind"].as_str()?);
        self.0
            .iter()
            .find(|(v, k, _)| v == api_version && k == kind)
            .map(|(_, _, validator)| validator)
    }

    /// What the API server would refuse in `object`, each as `path: reason`;
    /// `None` for a kind without a CRD.
    fn errors(&self, object: &Value) -> Option<Vec<String>> {
        let validator = self.validator(object)?;
        Some(
            validator
                .iter_errors(object)
                .map(|e| describe(&e))
                .collect(),
        )
    }
}

/// `spec.filters[0].exact: reason`; an unknown field is named in the path
/// (`spec.brokr`), as kubectl names it.
fn describe(error: &jsonschema::ValidationError<'_>) -> String {
    let mut path = String::new();
    for segment in error.instance_path() {
        match segment {
            jsonschema::paths::LocationSegment::Property(name) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&name);
            }
            jsonschema::paths::LocationSegment::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    if let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } =
        error.kind()
    {
        let prefix = if path.is_empty() { "" } else { "." };
        return format!("{path}{prefix}{}: unknown field", unexpected.join(", "));
    }
    format!("{path}: {error}")
}

#[test]
fn the_example_manifests_pass_their_crds() {
    let schemas = Schemas::load();
    let mut checked = BTreeSet::new();
    let mut refused = Vec::new();
    for folder in ["brokers", "triggers", "examples", "services"] {
        for file in yaml_files(&repo().join(folder)) {
            for object in documents(&file) {
                let Some(errors) = schemas.errors(&object) else {
                    continue;
                };
                checked.insert(object["kind"].as_str().unwrap_or_default().to_owned());
                let name = &object["metadata"]["name"];
                refused.extend(
                    errors
                        .into_iter()
                        .map(|e| format!("{}: {name}: {e}", file.display())),
                );
            }
        }
    }
    assert!(refused.is_empty(), "{refused:#?}");
    // So that an example moved away cannot make this test pass on nothing.
    let expected = [
        "Broker",
        "Trigger",
        "Service",
        "PingSource",
        "KafkaSource",
        "RabbitmqSource",
        "RabbitmqBrokerConfig",
        "ContainerSource",
        "JobSink",
        "Sequence",
        "Parallel",
    ];
    assert_eq!(
        checked,
        expected
            .iter()
            .map(|k| k.to_string())
            .collect::<BTreeSet<_>>()
    );
}

/// What the API server would refuse in a test manifest.
fn refused(schemas: &Schemas, yaml: &str) -> Vec<String> {
    let object: Value = serde_saphyr::from_str(yaml).expect("test YAML parses");
    schemas.errors(&object).expect("a kind with a CRD")
}

const TRIGGER: &str = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata:\n  name: t\nspec:\n  broker: default\n  subscriber:\n    uri: http://display.default.svc/\n";

#[test]
fn typos_and_values_out_of_range_are_refused_with_their_path() {
    let schemas = Schemas::load();
    assert_eq!(refused(&schemas, TRIGGER), Vec::<String>::new());
    // Status is the controller's: anything goes.
    let with_status = format!("{TRIGGER}status:\n  anything: [1, 2]\n");
    assert_eq!(refused(&schemas, &with_status), Vec::<String>::new());

    let cases = [
        (
            TRIGGER.replace("broker: default", "brokr: default"),
            "spec.brokr: unknown field",
        ),
        (
            format!("{TRIGGER}  delivery:\n    timeout: 10s\n"),
            "spec.delivery.timeout: ",
        ),
        (
            format!("{TRIGGER}  filters:\n    - exact: {{type: a}}\n      prefix: {{type: b}}\n"),
            "spec.filters[0]: ",
        ),
        (
            format!("{TRIGGER}  filters:\n    - all:\n        - not:\n            exakt: {{type: a}}\n"),
            "spec.filters[0].all[0].not.exakt: unknown field",
        ),
        (
            "apiVersion: sources.knative.dev/v1beta1\nkind: KafkaSource\nmetadata:\n  name: k\nspec:\n  bootstrapServers: [kafka:9092]\n  topics: [t]\n  consumers: 0\n  sink:\n    uri: http://x/\n".into(),
            "spec.consumers: 0 is less than the minimum of 1",
        ),
        (
            "apiVersion: sources.knative.dev/v1\nkind: ApiServerSource\nmetadata:\n  name: a\nspec:\n  mode: Resources\n  resources:\n    - {apiVersion: v1, kind: Event}\n  sink:\n    uri: http://x/\n".into(),
            "spec.mode: ",
        ),
        (
            "apiVersion: sources.knative.dev/v1alpha1\nkind: RabbitmqSource\nmetadata:\n  name: r\nspec:\n  rabbitmqResourcesConfig:\n    queueName: q\n    parallelism: 1001\n  sink:\n    uri: http://x/\n".into(),
            "spec.rabbitmqResourcesConfig.parallelism: 1001 is greater than the maximum of 1000",
        ),
        (
            "apiVersion: sources.knative.dev/v1\nkind: PingSource\nmetadata:\n  name: p\nspec:\n  schedule: '* * * * *'\n".into(),
            "spec: \"sink\" is a required property",
        ),
        (
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  template:\n    spec:\n      containers:\n        - image: app\n          readinessProbe:\n            httpGet:\n              port: true\n".into(),
            "spec.template.spec.containers[0].readinessProbe.httpGet.port: ",
        ),
    ];
    for (yaml, expected) in cases {
        let errors = refused(&schemas, &yaml);
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "expected {expected:?} for\n{yaml}\ngot {errors:#?}"
        );
    }

    // What `kubectl get ksvc -o yaml` writes in the template passes.
    let exported = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  template:\n    metadata:\n      creationTimestamp: null\n    spec:\n      containers:\n        - image: app\n";
    assert_eq!(refused(&schemas, exported), Vec::<String>::new());
    let typo = exported.replace("creationTimestamp: null", "anotations: {}");
    assert_eq!(
        refused(&schemas, &typo),
        vec!["spec.template.metadata.anotations: unknown field"]
    );

    // A KafkaSource with Knative's spec.net (as its docs write it) and an
    // ApiServerSource with filters pass; a typo in spec.net does not.
    let kafka_net = "apiVersion: sources.knative.dev/v1beta1\nkind: KafkaSource\nmetadata:\n  name: k\nspec:\n  bootstrapServers: [kafka:9093]\n  topics: [t]\n  net:\n    sasl:\n      enable: true\n      user:\n        secretKeyRef: {name: creds, key: user}\n      password:\n        secretKeyRef: {name: creds, key: password}\n      type:\n        secretKeyRef: {name: creds, key: saslType}\n    tls:\n      enable: true\n      caCert:\n        secretKeyRef: {name: creds, key: ca.crt}\n  sink:\n    uri: http://x/\n";
    assert_eq!(refused(&schemas, kafka_net), Vec::<String>::new());
    assert_eq!(
        refused(&schemas, &kafka_net.replace("caCert:", "caCerts:")),
        vec!["spec.net.tls.caCerts: unknown field"]
    );
    let filtered = "apiVersion: sources.knative.dev/v1\nkind: ApiServerSource\nmetadata:\n  name: a\nspec:\n  resources:\n    - {apiVersion: v1, kind: Event}\n  filters:\n    - any:\n        - prefix: {type: dev.knative.apiserver.resource.}\n        - cesql: \"type LIKE '%.add'\"\n  sink:\n    uri: http://x/\n";
    assert_eq!(refused(&schemas, filtered), Vec::<String>::new());

    // int-or-string: a port by number or by name.
    let by_name = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  template:\n    spec:\n      containers:\n        - image: app\n          ports:\n            - {containerPort: 8080, name: http1}\n          readinessProbe:\n            tcpSocket:\n              port: http1\n";
    assert_eq!(refused(&schemas, by_name), Vec::<String>::new());
    let by_number = by_name.replace("port: http1", "port: 8080");
    assert_eq!(refused(&schemas, &by_number), Vec::<String>::new());
}

/// The schema node at `path` (property names, `[]` for array items) of a
/// kind's first version.
fn schema_at<'a>(crds: &'a [Crd], kind: &str, path: &[&str]) -> &'a JSONSchemaProps {
    let crd = crds
        .iter()
        .find(|c| c.crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    let mut node = crd.crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("schema");
    for step in path {
        node = match (*step, &node.items) {
            ("[]", Some(JSONSchemaPropsOrArray::Schema(items))) => items,
            _ => node
                .properties
                .as_ref()
                .and_then(|p| p.get(*step))
                .unwrap_or_else(|| panic!("{kind}: no {path:?}")),
        };
    }
    node
}

#[test]
fn the_crds_limits_are_pilotlights() {
    use pilotlight::api::service::{MAX_CONTAINER_CONCURRENCY, MAX_TIMEOUT_SECONDS};
    let crds = crds();
    let revision = ["spec", "template", "spec"];
    let maximum = |kind: &str, path: &[&str]| schema_at(&crds, kind, path).maximum;
    assert_eq!(
        maximum(
            "Service",
            &[&revision[..], &["containerConcurrency"]].concat()
        ),
        Some(f64::from(MAX_CONTAINER_CONCURRENCY))
    );
    assert_eq!(
        maximum("Service", &[&revision[..], &["timeoutSeconds"]].concat()),
        Some(MAX_TIMEOUT_SECONDS as f64)
    );
    assert_eq!(
        maximum("KafkaSource", &["spec", "consumers"]),
        Some(f64::from(pilotlight::api::sources::kafka::MAX_CONSUMERS))
    );

    // The delivery durations: what pilotlight parses, the pattern takes.
    let schemas = Schemas::load();
    for duration in [
        "PT0.2S", "PT1M30S", "PT10S", "P1D", "P1DT2H", "PT0,5S", "10s", "1M",
    ] {
        let parsed = pilotlight::api::duck::parse_duration(duration);
        let yaml = format!("{TRIGGER}  delivery:\n    timeout: {duration}\n");
        assert_eq!(
            refused(&schemas, &yaml).is_empty(),
            parsed.is_ok(),
            "{duration}: pilotlight says {parsed:?}"
        );
    }
}

/// The keys of `object` that its k8s-openapi type does not have (they
/// would be dropped, or refused by kubectl): it is read as that type and
/// written back.
fn unknown_fields(object: &Value) -> Vec<String> {
    use k8s_openapi::api::{apps, core, rbac};
    fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(object: &Value) -> Value {
        let typed: T = serde_json::from_value(object.clone())
            .unwrap_or_else(|e| panic!("{} {}: {e}", object["kind"], object["metadata"]["name"]));
        serde_json::to_value(typed).expect("serializes")
    }
    let written = match object["kind"].as_str().unwrap_or_default() {
        "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(object),
        "Namespace" => round_trip::<core::v1::Namespace>(object),
        "ServiceAccount" => round_trip::<core::v1::ServiceAccount>(object),
        "ConfigMap" => round_trip::<core::v1::ConfigMap>(object),
        "Service" => round_trip::<core::v1::Service>(object),
        "Deployment" => round_trip::<apps::v1::Deployment>(object),
        "ClusterRole" => round_trip::<rbac::v1::ClusterRole>(object),
        "ClusterRoleBinding" => round_trip::<rbac::v1::ClusterRoleBinding>(object),
        "Role" => round_trip::<rbac::v1::Role>(object),
        "RoleBinding" => round_trip::<rbac::v1::RoleBinding>(object),
        other => panic!("deploy/ has a {other}: add its type here"),
    };
    let mut unknown = Vec::new();
    differences("", object, &written, &mut unknown);
    unknown
}

#[test]
fn kustomization_lists_every_manifest_of_deploy_and_each_reads_as_its_type() {
    let deploy = repo().join("deploy");
    let kustomization = documents(&deploy.join("kustomization.yaml")).remove(0);
    let listed: BTreeSet<PathBuf> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| deploy.join(r.as_str().expect("a path")))
        .collect();
    for path in &listed {
        assert!(path.is_file(), "{} does not exist", path.display());
        for object in documents(path) {
            let unknown = unknown_fields(&object);
            assert!(
                unknown.is_empty(),
                "{}: {} {}: keys that are not fields: {unknown:?}",
                path.display(),
                object["kind"],
                object["metadata"]["name"]
            );
        }
    }
    let manifests: BTreeSet<PathBuf> = yaml_files(&deploy)
        .into_iter()
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    assert_eq!(listed, manifests);
    // The Deployment's image is the one kustomization.yaml sets.
    let image = kustomization["images"][0]["name"].as_str().expect("image");
    let deployment = documents(&deploy.join("deployment.yaml")).remove(0);
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        json!(image)
    );
}

/// Whether a Role's rules allow `verb` on `resource` (of `group`) named
/// `name`.
fn allows(role: &Value, group: &str, resource: &str, name: &str, verb: &str) -> bool {
    let has = |rule: &Value, field: &str, value: &str| {
        rule[field]
            .as_array()
            .is_some_and(|values| values.iter().any(|v| v == value))
    };
    role["rules"].as_array().into_iter().flatten().any(|rule| {
        has(rule, "apiGroups", group)
            && has(rule, "resources", resource)
            && has(rule, "verbs", verb)
            && (rule.get("resourceNames").is_none() || has(rule, "resourceNames", name))
    })
}

/// What Kubernetes mode writes in its own namespace, the Role there grants:
/// the leader Lease, and the ConfigMap where the leader keeps the sources'
/// state for the next one (and nothing else of that namespace's ConfigMaps
/// but creating).
#[test]
fn the_namespaced_role_grants_the_lease_and_the_source_state() {
    let rbac = documents(&repo().join("deploy/rbac.yaml"));
    let role = rbac
        .iter()
        .find(|o| o["kind"] == "Role" && o["metadata"]["namespace"] == "pilotlight")
        .expect("a Role in the pilotlight namespace");
    for verb in ["get", "create", "update"] {
        assert!(
            allows(
                role,
                "coordination.k8s.io",
                "leases",
                "pilotlight-controller",
                verb
            ),
            "leases {verb}"
        );
    }
    for verb in ["get", "create", "update"] {
        assert!(
            allows(role, "", "configmaps", "pilotlight-source-state", verb),
            "configmaps {verb}"
        );
    }
    assert!(!allows(
        role,
        "",
        "configmaps",
        "kafka-broker-config",
        "update"
    ));
    assert!(!allows(
        role,
        "",
        "configmaps",
        "pilotlight-source-state",
        "delete"
    ));
}

#[test]
fn docker_compose_names_files_that_exist_and_waits_for_healthy_brokers() {
    let root = repo();
    let compose = documents(&root.join("docker-compose.yml")).remove(0);
    let services = compose["services"].as_object().expect("services");
    let named_volumes = compose["volumes"].as_object().cloned().unwrap_or_default();
    for (name, service) in services {
        if let Some(build) = service.get("build") {
            let context = root.join(build["context"].as_str().expect("build context"));
            assert!(context.is_dir(), "{name}: no folder {}", context.display());
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            assert!(dockerfile.is_file(), "{name}: no {}", dockerfile.display());
            // BuildKit reads <Dockerfile>.dockerignore beside it.
            let ignore = dockerfile.with_file_name(format!(
                "{}.dockerignore",
                dockerfile.file_name().expect("name").to_string_lossy()
            ));
            assert!(ignore.is_file(), "{name}: no {}", ignore.display());
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let source = volume.as_str().expect("short syntax").split(':').next();
            let source = source.expect("a source");
            if source.starts_with('.') || source.starts_with('/') {
                let path = root.join(source);
                assert!(path.exists(), "{name}: {} does not exist", path.display());
            } else {
                assert!(
                    named_volumes.contains_key(source),
                    "{name}: volume {source} is not declared"
                );
            }
        }
    }

    let pilotlight = &services["pilotlight"];
    for broker in ["rabbitmq", "kafka"] {
        assert_eq!(
            pilotlight["depends_on"][broker]["condition"],
            json!("service_healthy"),
            "pilotlight waits for a healthy {broker}"
        );
        assert!(services[broker]["healthcheck"]["test"].is_array());
    }
    assert!(pilotlight["healthcheck"]["test"].is_array());
    // Every -f path is inside a mounted folder.
    let mounts: Vec<&str> = pilotlight["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v.as_str()?.split(':').nth(1))
        .collect();
    let command: Vec<&str> = pilotlight["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(|a| a.as_str().expect("a string"))
        .collect();
    let paths: Vec<&str> = command
        .windows(2)
        .filter(|w| w[0] == "-f")
        .map(|w| w[1])
        .collect();
    assert_eq!(paths.len(), 4, "{command:?}");
    for path in paths {
        assert!(
            mounts.iter().any(|m| path.starts_with(m)),
            "-f {path} is not mounted: {mounts:?}"
        );
    }
}
