//! The source kinds: what each one sends and where (Knative's
//! sources.knative.dev group, and eventing-rabbitmq's RabbitmqSource). The
//! running sources are in `eventing::source`, but for ContainerSource,
//! whose pod the serving half runs (`serving::daemon`), and SinkBinding,
//! which the control plane binds into its subject (`control::sinks`).

pub mod apiserver;
pub(crate) mod container;
pub mod kafka;
pub(crate) mod ping;
pub(crate) mod rabbitmq;
pub(crate) mod schedule;
pub(crate) mod sinkbinding;

use crate::api::duck::CeOverrides;
use crate::api::service::{EnvVar, RevisionTemplate};

/// The variable that holds the resolved sink URI.
pub(crate) const K_SINK: &str = "K_SINK";
/// The variable that holds `spec.ceOverrides` as JSON.
pub(crate) const K_CE_OVERRIDES: &str = "K_CE_OVERRIDES";

/// Sets `K_SINK` and `K_CE_OVERRIDES` in every container of `template`, as
/// Knative does for a ContainerSource's pod and a SinkBinding's subject:
/// the entries of these names the template has go first, so the bound
/// values win.
pub(crate) fn bind_sink(
    template: &mut RevisionTemplate,
    sink: &str,
    overrides: Option<&CeOverrides>,
) {
    let overrides = ce_overrides_env(overrides);
    for container in &mut template.spec.containers {
        container
            .env
            .retain(|var| var.name != K_SINK && var.name != K_CE_OVERRIDES);
        for (name, value) in [(K_SINK, sink), (K_CE_OVERRIDES, overrides.as_str())] {
            container.env.push(EnvVar {
                name: name.to_owned(),
                value: Some(value.to_owned()),
                value_from: None,
            });
        }
    }
}

/// `K_CE_OVERRIDES` as Knative sets it: `spec.ceOverrides` as JSON
/// (`{"extensions":{...}}`), empty when there are none.
pub(crate) fn ce_overrides_env(overrides: Option<&CeOverrides>) -> String {
    overrides
        .and_then(|o| serde_json::to_string(o).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::service::Container;

    #[test]
    fn the_sink_is_bound_into_every_container_replacing_earlier_values() {
        let mut template = RevisionTemplate::default();
        template.spec.containers = vec![Container::default(), Container::default()];
        template.spec.containers[0].env.push(EnvVar {
            name: K_SINK.into(),
            value: Some("http://old".into()),
            value_from: None,
        });
        let overrides = CeOverrides {
            extensions: [("sink".to_owned(), "bound".to_owned())].into(),
        };
        bind_sink(&mut template, "http://new", Some(&overrides));
        for container in &template.spec.containers {
            let env: Vec<(&str, Option<&str>)> = container
                .env
                .iter()
                .map(|v| (v.name.as_str(), v.value.as_deref()))
                .collect();
            assert_eq!(
                env,
                [
                    (K_SINK, Some("http://new")),
                    (K_CE_OVERRIDES, Some(r#"{"extensions":{"sink":"bound"}}"#))
                ]
            );
        }
        bind_sink(&mut template, "http://new", None);
        assert_eq!(
            template.spec.containers[0].env[1].value.as_deref(),
            Some("")
        );
    }
}
