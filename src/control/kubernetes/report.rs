//! Writing pilotlight's view of an object into its `status` through the
//! status subresource, as Knative's reconcilers do: conditions,
//! observedGeneration, and the address or URL where it applies.

use kube::Api;
use kube::api::{DynamicObject, PostParams};
use serde_json::Value;

use super::kinds::WatchedKind;
use crate::api::status::Status;

/// The `status` block to write: `status` with the transition times of
/// unchanged conditions kept from what the object has, and the generation
/// it describes. Live figures (a trigger's backlog) are left out: writing
/// them would make every change of the figure a write, and every write a
/// watch event.
pub(crate) fn status_block(mut status: Status, object: &DynamicObject) -> Value {
    status.backlog = None;
    status.lost_to_retention = None;
    let previous = object
        .data
        .get("status")
        .and_then(|s| serde_json::from_value::<Status>(s.clone()).ok());
    status.carry_transition_times(previous.as_ref());
    let mut block =
        serde_json::to_value(&status).unwrap_or_else(|_| Value::Object(Default::default()));
    if let (Some(map), Some(generation)) = (block.as_object_mut(), object.metadata.generation) {
        map.insert("observedGeneration".into(), generation.into());
    }
    block
}

/// Replaces the object's status with `block` unless it already has it. On a
/// conflict (the object changed since it was read) reads it again and
/// retries once; a second conflict is left to the next reconcile.
pub(crate) async fn write_status(
    api: &Api<DynamicObject>,
    kind: &WatchedKind,
    object: &DynamicObject,
    status: Status,
) -> Result<(), kube::Error> {
    let mut object = object.clone();
    for attempt in 0..2 {
        let block = status_block(status.clone(), &object);
        if object.data.get("status") == Some(&block) {
            return Ok(());
        }
        let name = object.metadata.name.clone().unwrap_or_default();
        let mut updated = object.clone();
        updated.data["status"] = block;
        match api
            .replace_status(&name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt == 0 => {
                tracing::debug!(kind = %kind.resource.kind, %name, "status conflict; reading the object again");
                object = api.get_status(&name).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(status: Value, generation: i64) -> DynamicObject {
        let mut object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "eventing.knative.dev/v1",
            "kind": "Broker",
            "metadata": {"name": "b", "namespace": "ns", "generation": generation},
        }))
        .expect("object");
        object.data["status"] = status;
        object
    }

    #[test]
    fn the_block_keeps_unchanged_transition_times_and_names_the_generation() {
        let mut ready = Status::ready();
        ready.conditions[0].last_transition_time = "2026-01-01T00:00:00Z".into();
        let current = object(serde_json::to_value(&ready).expect("json"), 3);
        let block = status_block(Status::ready(), &current);
        assert_eq!(block["observedGeneration"], 3);
        assert_eq!(
            block["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        let changed = status_block(Status::not_ready("BackendFailed", "down"), &current);
        assert_ne!(
            changed["conditions"][0]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(changed["conditions"][0]["reason"], "BackendFailed");
    }

    #[test]
    fn live_figures_are_not_written() {
        let mut status = Status::ready();
        status.backlog = Some(12);
        let block = status_block(status, &object(Value::Null, 1));
        assert!(block.get("backlog").is_none(), "{block}");
    }
}
