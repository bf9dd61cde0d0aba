//! The CloudEvents Knative's ApiServerSource adapter sends, rebuilt here:
//!
//! - type `dev.knative.apiserver.resource.{add,update,delete}` with the object
//!   as data (`Resource` mode), or `dev.knative.apiserver.ref.{add,update,delete}`
//!   with `{"apiVersion","kind","name","namespace"}` (`Reference` mode; when
//!   `spec.owner` is set the reference is the object's controller, as Knative
//!   does);
//! - source: the API server URL;
//! - subject: Knative's self link, `/apis/{apiVersion}/namespaces/{ns}/{plural}/{name}`
//!   (Knative writes `/apis/v1/...` for core kinds too, and so does this);
//! - extensions `kind`, `name`, `namespace` (for trigger filters);
//! - datacontenttype `application/json`;
//! - id: a UUID v5 of the source, the object (uid, or namespace and name),
//!   its resourceVersion and the event type, where Knative draws a random
//!   one: the same change gives the same id on every replica and after a
//!   restart, so that a sink can drop repeats.

use bytes::Bytes;
use kube::api::DynamicObject;

use crate::api::sources::apiserver::EventMode;
use crate::cloudevent::Event;

/// What happened to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Add,
    Update,
    Delete,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Add => "add",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

/// The CloudEvent type for a mode and an action.
pub(crate) fn event_type(mode: EventMode, action: Action) -> String {
    let family = match mode {
        EventMode::Reference => "ref",
        EventMode::Resource => "resource",
    };
    format!("dev.knative.apiserver.{family}.{}", action.word())
}

/// Knative's subject for an object.
pub(crate) fn self_link(api_version: &str, namespace: &str, plural: &str, name: &str) -> String {
    format!("/apis/{api_version}/namespaces/{namespace}/{plural}/{name}")
}

/// The UUID namespace of event ids (a fixed random UUID, pilotlight's own).
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6f1c_2b7e_93a4_4d0b_8e55_0c3f_a2d1_7b49);

/// The id of the event of type `ty` for `object` as `origin` (the
/// ApiServerSource, `namespace/name`) sends it: see the module's comment.
pub(crate) fn event_id(origin: &str, object: &DynamicObject, ty: &str) -> String {
    let meta = &object.metadata;
    let field = |value: &Option<String>| value.clone().unwrap_or_default();
    // Newlines cannot occur in any part, so parts cannot run into each other.
    let name = [
        origin.to_owned(),
        field(&meta.namespace),
        field(&meta.name),
        field(&meta.uid),
        field(&meta.resource_version),
        ty.to_owned(),
    ]
    .join("\n");
    uuid::Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).to_string()
}

/// What an event is built from besides the object.
pub(crate) struct EventContext<'a> {
    pub mode: EventMode,
    /// The ApiServerSource sending it (`namespace/name`), for the id.
    pub origin: &'a str,
    /// The API server URL: the event's source.
    pub source: &'a str,
    pub plural: &'a str,
    /// In `Reference` mode, refer to the object's controller when it has one.
    pub as_controller: bool,
}

/// Builds the event for `object`, whose `apiVersion` and `kind` are set.
pub(crate) fn make_event(
    context: &EventContext<'_>,
    action: Action,
    object: &DynamicObject,
) -> Result<Event, String> {
    let EventContext {
        mode,
        origin,
        source,
        plural,
        as_controller,
    } = *context;
    let (api_version, kind) = object
        .types
        .as_ref()
        .map(|t| (t.api_version.as_str(), t.kind.as_str()))
        .unwrap_or(("", ""));
    let name = object.metadata.name.as_deref().unwrap_or("");
    let namespace = object.metadata.namespace.as_deref().unwrap_or("");
    let data = match mode {
        EventMode::Resource => serde_json::to_vec(object),
        EventMode::Reference => {
            let controller = as_controller
                .then(|| {
                    object
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .find(|o| o.controller == Some(true))
                })
                .flatten();
            let reference = match controller {
                Some(owner) => serde_json::json!({
                    "apiVersion": owner.api_version,
                    "kind": owner.kind,
                    "name": owner.name,
                    "namespace": namespace,
                }),
                None => serde_json::json!({
                    "apiVersion": api_version,
                    "kind": kind,
                    "name": name,
                    "namespace": namespace,
                }),
            };
            serde_json::to_vec(&reference)
        }
    }
    .map_err(|e| format!("cannot encode the object as JSON: {e}"))?;

    let ty = event_type(mode, action);
    let mut attributes = vec![
        ("specversion".to_string(), "1.0".to_string()),
        ("id".to_string(), event_id(origin, object, &ty)),
        ("source".to_string(), source.to_string()),
        ("type".to_string(), ty),
        (
            "subject".to_string(),
            self_link(api_version, namespace, plural, name),
        ),
        (
            "datacontenttype".to_string(),
            "application/json".to_string(),
        ),
    ];
    for (attr, value) in [("kind", kind), ("name", name), ("namespace", namespace)] {
        if !value.is_empty() {
            attributes.push((attr.to_string(), value.to_string()));
        }
    }
    Event::new(attributes, Some(Bytes::from(data))).map_err(|e| e.to_string())
}
