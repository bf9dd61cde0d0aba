//! Pure unit tests: events, validation, and what a list or a change sends.
//! The source against an API server is tested in tests/apiserver_source.rs,
//! with the fake API server of tests/support/apiserver.rs.

use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

use super::ApiServerSource;
use super::events::{Action, EventContext, event_id, make_event};
use super::known::{Known, Scope, fill_types};
use crate::api::sources::apiserver::{ApiVersionKind, EventMode};
use crate::cloudevent::Event;

fn data(event: &Event) -> Value {
    serde_json::from_slice(event.data().expect("event has data")).expect("data is JSON")
}

fn configmaps() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("", "v1", "ConfigMap"), "configmaps")
}

/// A configmap as a list item: without apiVersion and kind.
fn item(namespace: &str, name: &str, version: &str) -> DynamicObject {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": namespace,
        "resourceVersion": version}}))
    .unwrap()
}

fn summary(changes: &[(Action, DynamicObject)]) -> Vec<String> {
    changes
        .iter()
        .map(|(action, o)| format!("{action:?} {}", o.metadata.name.as_deref().unwrap_or("")))
        .collect()
}

#[tokio::test]
async fn owner_filter_and_controller_reference() {
    // Events only for objects controlled by the owner kind; the reference
    // names the controller (Knative's behaviour with spec.owner).
    let object: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "default",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                                 "uid": "u", "controller": true}]}
    }))
    .unwrap();
    let context = EventContext {
        mode: EventMode::Reference,
        origin: "default/pods",
        source: "https://10.0.0.1:443",
        plural: "pods",
        as_controller: true,
    };
    let event = make_event(&context, Action::Update, &object).unwrap();
    assert_eq!(event.ty(), "dev.knative.apiserver.ref.update");
    assert_eq!(event.source(), "https://10.0.0.1:443");
    assert_eq!(
        event.attribute("subject"),
        Some("/apis/v1/namespaces/default/pods/web-1")
    );
    assert_eq!(
        data(&event),
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "namespace": "default"})
    );
}

#[test]
fn validation_reports_field_paths() {
    let parse = |spec: Value| -> ApiServerSource {
        let mut spec = spec;
        spec["sink"] = json!({"uri": "http://sink.example"});
        serde_json::from_value(json!({
            "apiVersion": "sources.knative.dev/v1", "kind": "ApiServerSource",
            "metadata": {"name": "w"}, "spec": spec,
        }))
        .unwrap()
    };
    let field = |spec: Value| parse(spec).validate().unwrap_err().field;
    let cm = json!([{"apiVersion": "v1", "kind": "ConfigMap"}]);
    assert_eq!(field(json!({"resources": []})), "spec.resources");
    assert_eq!(field(json!({"resources": cm, "mode": "Ref"})), "spec.mode");
    assert_eq!(
        field(
            json!({"resources": [{"apiVersion": "v1", "kind": "ConfigMap"}, {"apiVersion": "apps/v1"}]})
        ),
        "spec.resources[1].kind"
    );
    assert_eq!(
        field(json!({"resources": [{"apiVersion": "", "kind": "Pod"}]})),
        "spec.resources[0].apiVersion"
    );
    assert_eq!(
        field(json!({"resources": [{"apiVersion": "v1", "kind": "Pod",
            "selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}]})),
        "spec.resources[0].selector.matchExpressions[0].operator"
    );
    assert_eq!(
        field(
            json!({"resources": cm, "namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}})
        ),
        "spec.namespaceSelector.matchExpressions[0].values"
    );
    assert_eq!(
        field(json!({"resources": cm, "ceOverrides": {"extensions": {"type": "x"}}})),
        "spec.ceOverrides.extensions.type"
    );
    assert_eq!(field(json!({"resources": cm, "owner": {}})), "spec.owner");
    // spec.filters: the Trigger's dialects and checks, with their paths.
    assert_eq!(
        field(json!({"resources": cm, "filters": [{"exact": {"type": "a"}}, {}]})),
        "spec.filters[1]"
    );
    assert_eq!(
        field(json!({"resources": cm, "filters": [{"not": {"cesql": "type ="}}]})),
        "spec.filters[0].not.cesql"
    );
    assert_eq!(
        field(json!({"resources": cm, "filters": [{"any": [{"prefix": {"Bad-Name": "x"}}]}]})),
        "spec.filters[0].any[0].prefix.Bad-Name"
    );
    let ok = parse(
        json!({"resources": cm, "mode": "Resource", "serviceAccountName": "sa",
        "owner": {"apiVersion": "apps/v1", "kind": "Deployment"}}),
    );
    assert_eq!(ok.validate(), Ok(()));
    assert_eq!(ok.mode(), Ok(EventMode::Resource));
    // Unknown fields are refused.
    assert!(
        serde_json::from_value::<ApiServerSource>(json!({
            "apiVersion": "sources.knative.dev/v1", "kind": "ApiServerSource",
            "metadata": {"name": "w"}, "spec": {"resources": cm, "sink": {"uri": "http://s"}, "modes": "x"}
        }))
        .is_err()
    );
}

#[tokio::test]
async fn a_tls_client_finds_the_ring_crypto_provider() {
    // kube builds rustls without choosing a provider: with ring alone in the
    // tree rustls picks it; with aws-lc-rs too this would panic.
    let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    assert!(kube::Client::try_from(config).is_ok());
}

#[test]
fn a_list_item_gets_the_apiversion_and_kind_of_its_resource() {
    let mut object = item("default", "a", "1");
    assert!(object.types.is_none());
    fill_types(&mut object, &configmaps());
    let types = object.types.expect("types are filled");
    assert_eq!(
        (types.api_version.as_str(), types.kind.as_str()),
        ("v1", "ConfigMap")
    );
}

#[test]
fn the_first_list_sends_nothing_and_a_relist_sends_only_differences() {
    let (mut known, scope, resource) = (Known::default(), Scope::default(), configmaps());
    let first = known.relisted(
        vec![
            item("default", "same", "1"),
            item("default", "changed", "2"),
            item("default", "removed", "3"),
        ],
        &scope,
        &resource,
    );
    // As Knative's adapter: what exists at the start is not news.
    assert_eq!(summary(&first), Vec::<String>::new());
    let second = known.relisted(
        vec![
            item("default", "same", "1"),
            item("default", "changed", "4"),
            item("default", "new", "5"),
        ],
        &scope,
        &resource,
    );
    assert_eq!(
        summary(&second),
        ["Update changed", "Add new", "Delete removed"]
    );
    assert_eq!(
        second[0].1.types.as_ref().map(|t| t.kind.as_str()),
        Some("ConfigMap")
    );
    let unchanged = vec![
        item("default", "same", "1"),
        item("default", "changed", "4"),
        item("default", "new", "5"),
    ];
    assert!(known.relisted(unchanged, &scope, &resource).is_empty());
}

#[test]
fn a_change_seen_already_sends_nothing_and_a_deletion_of_an_unknown_object_neither() {
    let (mut known, scope, resource) = (Known::default(), Scope::default(), configmaps());
    let add = known.applied(item("default", "a", "1"), &scope, &resource);
    assert_eq!(add.map(|(action, _)| action), Some(Action::Add));
    assert!(
        known
            .applied(item("default", "a", "1"), &scope, &resource)
            .is_none()
    );
    let update = known.applied(item("default", "a", "2"), &scope, &resource);
    assert_eq!(update.map(|(action, _)| action), Some(Action::Update));
    assert!(
        known
            .deleted(item("default", "b", "3"), &resource)
            .is_none()
    );
    let delete = known.deleted(item("default", "a", "4"), &resource);
    assert_eq!(
        delete.map(|(action, o)| (action, o.metadata.resource_version)),
        Some((Action::Delete, Some("4".into())))
    );
    assert!(
        known
            .deleted(item("default", "a", "5"), &resource)
            .is_none()
    );
}

#[test]
fn scope_keeps_matching_namespaces_and_owned_objects_and_leaving_it_is_a_delete() {
    let resource = configmaps();
    let mut scope = Scope {
        namespaces: Some(["team-a".to_string()].into()),
        owner: None,
    };
    assert!(scope.contains(&item("team-a", "in", "1")));
    assert!(!scope.contains(&item("team-b", "out", "1")));
    let mut known = Known::default();
    assert!(
        known
            .applied(item("team-a", "x", "1"), &scope, &resource)
            .is_some()
    );
    scope.namespaces = Some(Default::default());
    let left = known.applied(item("team-a", "x", "2"), &scope, &resource);
    assert_eq!(left.map(|(action, _)| action), Some(Action::Delete));

    let owned = |kind: &str, controller: bool| -> DynamicObject {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "default",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": "o",
                                 "uid": "u", "controller": controller}]}}))
        .unwrap()
    };
    let scope = Scope {
        namespaces: None,
        owner: Some(ApiVersionKind {
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
        }),
    };
    assert!(scope.contains(&owned("ReplicaSet", true)));
    assert!(!scope.contains(&owned("ReplicaSet", false)));
    assert!(!scope.contains(&owned("StatefulSet", true)));
    assert!(!scope.contains(&item("default", "p", "1")));
}

#[test]
fn an_event_id_is_the_same_for_the_same_change_and_differs_otherwise() {
    let object = |version: &str| {
        let mut object = item("default", "a", version);
        object.metadata.uid = Some("u-1".into());
        object
    };
    let id = |origin: &str, version: &str, ty: &str| event_id(origin, &object(version), ty);
    let add = "dev.knative.apiserver.ref.add";
    let first = id("default/watch", "7", add);
    assert_eq!(
        first,
        id("default/watch", "7", add),
        "a restart or another replica"
    );
    assert_eq!(
        uuid::Uuid::parse_str(&first).map(|u| u.get_version_num()),
        Ok(5)
    );
    for other in [
        id("default/watch", "8", add),
        id("default/other", "7", add),
        id("default/watch", "7", "dev.knative.apiserver.ref.update"),
        id("default/watch", "7", "dev.knative.apiserver.resource.add"),
    ] {
        assert_ne!(first, other);
    }
}
