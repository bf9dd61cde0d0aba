//! The event mesh as a graph, for the console's picture: sources →
//! brokers and channels → triggers and subscriptions → subscribers, replies
//! and dead-letter sinks. Built from the same views `pilotlight get` lists,
//! so the picture and the command line never disagree; the browser lays
//! it out.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::api::manifest::ManifestError;
use crate::api::status::ObjectView;

/// What the graph is made from: every collection the admin API lists.
#[derive(Default)]
pub(crate) struct MeshViews {
    pub brokers: Vec<ObjectView>,
    pub triggers: Vec<ObjectView>,
    pub sources: Vec<ObjectView>,
    pub services: Vec<ObjectView>,
    pub channels: Vec<ObjectView>,
    pub subscriptions: Vec<ObjectView>,
    pub flows: Vec<ObjectView>,
    pub jobsinks: Vec<ObjectView>,
    pub refused: Vec<ManifestError>,
}

#[derive(Debug, Default, Serialize)]
pub(crate) struct Mesh {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// The refused manifests, shown first.
    pub errors: Vec<Refused>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Node {
    /// `Kind/namespace/name`, or `URI/{uri}`.
    pub id: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// The Ready condition's status; None for an address outside pilotlight.
    pub ready: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// `file:line` it was loaded from.
    pub source: Option<String>,
    /// A short line under the name: a trigger's filter, a service's URL.
    pub detail: Option<String>,
    /// Where to tail it (brokers and channels).
    pub tail: Option<String>,
    /// Where to replay it (triggers and subscriptions).
    pub replay: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Edge {
    pub from: String,
    pub to: String,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Role {
    Sink,
    Trigger,
    Subscription,
    Subscriber,
    Reply,
    DeadLetter,
}

#[derive(Debug, Serialize)]
pub(crate) struct Refused {
    /// As `pilotlight run` logs it.
    pub text: String,
    pub file: String,
    pub line: usize,
    pub object: Option<String>,
    pub field: Option<String>,
    pub reason: String,
}

fn node_id(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

/// The graph being built: nodes by id, so that a destination named before
/// its object is listed (or outside pilotlight) gets one node.
#[derive(Default)]
struct Builder {
    nodes: BTreeMap<String, Node>,
    edges: Vec<Edge>,
}

impl Builder {
    fn object(&mut self, view: &ObjectView) -> String {
        let meta = &view.metadata;
        let id = node_id(&view.kind, &meta.namespace, &meta.name);
        let ready = view.status.ready_condition();
        let node = Node {
            id: id.clone(),
            kind: view.kind.clone(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            ready: Some(ready.map_or_else(|| "Unknown".to_owned(), |c| c.status.clone())),
            reason: ready.and_then(|c| c.reason.clone()),
            message: ready.and_then(|c| c.message.clone()),
            source: Some(meta.source.clone()).filter(|s| !s.is_empty()),
            detail: None,
            tail: None,
            replay: None,
        };
        self.nodes.insert(id.clone(), node);
        id
    }

    /// The node a Knative destination (`{ref, uri}`) names, made if it is
    /// not an object listed here.
    fn destination(&mut self, destination: &Value, namespace: &str) -> Option<String> {
        if let Some(reference) = destination.get("ref").filter(|r| r.is_object()) {
            let kind = reference.get("kind")?.as_str()?;
            let name = reference.get("name")?.as_str()?;
            let namespace = reference
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or(namespace);
            let id = node_id(kind, namespace, name);
            self.nodes.entry(id.clone()).or_insert_with(|| Node {
                id: id.clone(),
                kind: kind.to_owned(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                ready: None,
                reason: None,
                message: Some(format!("{kind} {namespace}/{name} is not loaded")),
                source: None,
                detail: None,
                tail: None,
                replay: None,
            });
            return Some(id);
        }
        let uri = destination.get("uri")?.as_str()?;
        let id = format!("URI/{uri}");
        self.nodes.entry(id.clone()).or_insert_with(|| Node {
            id: id.clone(),
            kind: "URI".into(),
            namespace: String::new(),
            name: uri.to_owned(),
            ready: None,
            reason: None,
            message: None,
            source: None,
            detail: None,
            tail: None,
            replay: None,
        });
        Some(id)
    }

    fn edge(&mut self, from: &str, to: Option<String>, role: Role) {
        if let Some(to) = to {
            self.edges.push(Edge {
                from: from.to_owned(),
                to,
                role,
            });
        }
    }

    /// A `spec.delivery.deadLetterSink`, drawn from `from`.
    fn dead_letter(&mut self, from: &str, spec: &Value, namespace: &str) {
        if let Some(sink) = spec.pointer("/delivery/deadLetterSink") {
            let to = self.destination(sink, namespace);
            self.edge(from, to, Role::DeadLetter);
        }
    }

    fn set(&mut self, id: &str, change: impl FnOnce(&mut Node)) {
        if let Some(node) = self.nodes.get_mut(id) {
            change(node);
        }
    }
}

impl Mesh {
    pub(crate) fn build(views: &MeshViews) -> Mesh {
        let mut graph = Builder::default();
        for view in &views.brokers {
            let id = graph.object(view);
            let meta = &view.metadata;
            let class = meta.annotations.get("eventing.knative.dev/broker.class");
            let tail = format!("/api/v1/brokers/{}/{}/events", meta.namespace, meta.name);
            graph.set(&id, |node| {
                node.detail = class.cloned();
                node.tail = Some(tail);
            });
            graph.dead_letter(&id, &view.spec, &meta.namespace);
        }
        for view in &views.channels {
            let id = graph.object(view);
            let meta = &view.metadata;
            let tail = format!("/api/v1/channels/{}/{}/events", meta.namespace, meta.name);
            graph.set(&id, |node| node.tail = Some(tail));
            graph.dead_letter(&id, &view.spec, &meta.namespace);
        }
        for view in views.services.iter().chain(&views.jobsinks) {
            let id = graph.object(view);
            let url = view
                .status
                .serving
                .as_ref()
                .and_then(|s| s.url.clone())
                .or_else(|| view.status.address.as_ref().map(|a| a.url.clone()));
            graph.set(&id, |node| node.detail = url);
        }
        for view in &views.sources {
            let id = graph.object(view);
            let namespace = &view.metadata.namespace;
            let to = view
                .spec
                .get("sink")
                .and_then(|sink| graph.destination(sink, namespace));
            graph.edge(&id, to, Role::Sink);
        }
        for view in &views.triggers {
            let id = graph.object(view);
            let meta = &view.metadata;
            let replay = format!("/api/v1/triggers/{}/{}/replay", meta.namespace, meta.name);
            graph.set(&id, |node| {
                node.detail = filter_text(&view.spec);
                node.replay = Some(replay);
            });
            if let Some(broker) = view.spec.get("broker").and_then(Value::as_str) {
                let broker = node_id("Broker", &meta.namespace, broker);
                graph.edge(&broker, Some(id.clone()), Role::Trigger);
            }
            let subscriber = view
                .spec
                .get("subscriber")
                .and_then(|s| graph.destination(s, &meta.namespace));
            graph.edge(&id, subscriber, Role::Subscriber);
            graph.dead_letter(&id, &view.spec, &meta.namespace);
        }
        for view in &views.subscriptions {
            let id = graph.object(view);
            let meta = &view.metadata;
            let replay = format!(
                "/api/v1/subscriptions/{}/{}/replay",
                meta.namespace, meta.name
            );
            graph.set(&id, |node| node.replay = Some(replay));
            let channel = view
                .spec
                .get("channel")
                .map(|channel| serde_json::json!({ "ref": channel }))
                .and_then(|channel| graph.destination(&channel, &meta.namespace));
            if let Some(channel) = channel {
                graph.edge(&channel, Some(id.clone()), Role::Subscription);
            }
            for (field, role) in [("subscriber", Role::Subscriber), ("reply", Role::Reply)] {
                let to = view
                    .spec
                    .get(field)
                    .and_then(|d| graph.destination(d, &meta.namespace));
                graph.edge(&id, to, role);
            }
            graph.dead_letter(&id, &view.spec, &meta.namespace);
        }
        for view in &views.flows {
            let id = graph.object(view);
            // Events sent to a flow enter its first channel: the one whose
            // address is the flow's.
            let address = view.status.address.as_ref().map(|a| &a.url);
            let ingress = views
                .channels
                .iter()
                .find(|c| address.is_some() && c.status.address.as_ref().map(|a| &a.url) == address)
                .map(|c| node_id(&c.kind, &c.metadata.namespace, &c.metadata.name));
            graph.edge(&id, ingress, Role::Sink);
        }
        Mesh {
            nodes: graph.nodes.into_values().collect(),
            edges: graph.edges,
            errors: views.refused.iter().map(refused).collect(),
        }
    }
}

fn refused(error: &ManifestError) -> Refused {
    Refused {
        text: error.to_string(),
        file: error.origin.file.display().to_string(),
        line: error.origin.line,
        object: error.object.clone(),
        field: error.field.clone(),
        reason: error.reason.clone(),
    }
}

/// A trigger's filter in one line: `type = x, source = y` for the
/// attributes filter, the expression for one CESQL filter, else the
/// `filters` as JSON.
fn filter_text(spec: &Value) -> Option<String> {
    if let Some(filters) = spec.get("filters").and_then(Value::as_array)
        && !filters.is_empty()
    {
        if let [only] = filters.as_slice()
            && let Some(cesql) = only.get("cesql").and_then(Value::as_str)
        {
            return Some(cesql.to_owned());
        }
        return Some(Value::Array(filters.clone()).to_string());
    }
    let attributes = spec.pointer("/filter/attributes")?.as_object()?;
    let pairs: Vec<String> = attributes
        .iter()
        .map(|(name, value)| format!("{name} = {}", value.as_str().unwrap_or_default()))
        .collect();
    (!pairs.is_empty()).then(|| pairs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::status::{Status, ViewMeta};
    use serde_json::json;

    fn view(kind: &str, name: &str, spec: Value) -> ObjectView {
        ObjectView {
            api_version: "v1".into(),
            kind: kind.into(),
            metadata: ViewMeta {
                name: name.into(),
                namespace: "default".into(),
                annotations: BTreeMap::new(),
                source: format!("{name}.yaml:1"),
                owner_references: Vec::new(),
            },
            spec,
            status: Status::ready(),
        }
    }

    #[test]
    fn draws_sources_brokers_triggers_and_their_destinations() {
        let views = MeshViews {
            sources: vec![view(
                "PingSource",
                "ping",
                json!({"sink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}}}),
            )],
            brokers: vec![view("Broker", "default", json!({}))],
            triggers: vec![view(
                "Trigger",
                "display",
                json!({
                    "broker": "default",
                    "filter": {"attributes": {"type": "com.example.a"}},
                    "subscriber": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "display"}},
                    "delivery": {"deadLetterSink": {"uri": "http://dead.example/"}}
                }),
            )],
            services: vec![view("Service", "display", json!({}))],
            ..MeshViews::default()
        };
        let mesh = Mesh::build(&views);
        let edges: Vec<(&str, &str, Role)> = mesh
            .edges
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str(), e.role))
            .collect();
        assert_eq!(
            edges,
            [
                (
                    "PingSource/default/ping",
                    "Broker/default/default",
                    Role::Sink
                ),
                (
                    "Broker/default/default",
                    "Trigger/default/display",
                    Role::Trigger
                ),
                (
                    "Trigger/default/display",
                    "Service/default/display",
                    Role::Subscriber
                ),
                (
                    "Trigger/default/display",
                    "URI/http://dead.example/",
                    Role::DeadLetter
                ),
            ]
        );
        let trigger = mesh.nodes.iter().find(|n| n.kind == "Trigger").unwrap();
        assert_eq!(trigger.detail.as_deref(), Some("type = com.example.a"));
        assert_eq!(
            trigger.replay.as_deref(),
            Some("/api/v1/triggers/default/display/replay")
        );
        let broker = mesh.nodes.iter().find(|n| n.kind == "Broker").unwrap();
        assert_eq!(
            broker.tail.as_deref(),
            Some("/api/v1/brokers/default/default/events")
        );
        // Listed objects are nodes once, however often they are named.
        assert_eq!(mesh.nodes.len(), 5);
    }

    #[test]
    fn a_destination_that_is_not_loaded_is_a_node_without_readiness() {
        let views = MeshViews {
            brokers: vec![view("Broker", "default", json!({}))],
            triggers: vec![view(
                "Trigger",
                "t",
                json!({"broker": "default", "filters": [{"cesql": "type LIKE 'a%'"}],
                       "subscriber": {"ref": {"kind": "Service", "name": "missing"}}}),
            )],
            ..MeshViews::default()
        };
        let mesh = Mesh::build(&views);
        let missing = mesh
            .nodes
            .iter()
            .find(|n| n.id == "Service/default/missing")
            .unwrap();
        assert_eq!(missing.ready, None);
        let trigger = mesh.nodes.iter().find(|n| n.kind == "Trigger").unwrap();
        assert_eq!(trigger.detail.as_deref(), Some("type LIKE 'a%'"));
    }
}
