//! A revision's ready pods, from the EndpointSlices the cluster keeps for
//! its private Service (labelled `kubernetes.io/service-name`).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use crate::serving::runtime::{Endpoint, InstanceLoad};

/// Publishes the ready endpoints of `service`'s slices until the task is
/// aborted.
pub(super) async fn publish(
    api: Api<EndpointSlice>,
    service: String,
    endpoints: watch::Sender<Arc<[Endpoint]>>,
) {
    let config =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={service}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    // Filled during a (re)list, which replaces `slices` once complete.
    let mut listed: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut loads = Loads::default();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(slice)) => {
                listed.insert(slice_name(&slice), slice);
            }
            Ok(watcher::Event::InitDone) => slices = std::mem::take(&mut listed),
            Ok(watcher::Event::Apply(slice)) => {
                slices.insert(slice_name(&slice), slice);
            }
            Ok(watcher::Event::Delete(slice)) => {
                slices.remove(&slice_name(&slice));
            }
            Err(error) => {
                super::watch_error::log(
                    &error,
                    "the revision's EndpointSlices (it gets no new endpoints meanwhile)",
                    "get, list and watch discovery.k8s.io endpointslices in this namespace",
                    &service,
                );
                continue;
            }
        }
        let ready = ready_addresses(slices.values());
        endpoints.send_if_modified(|published| {
            let unchanged = published.len() == ready.len()
                && published
                    .iter()
                    .zip(&ready)
                    .all(|(e, (id, address))| *e.id == **id && e.address == *address);
            if !unchanged {
                *published = loads.endpoints(ready);
            }
            !unchanged
        });
    }
}

fn slice_name(slice: &EndpointSlice) -> String {
    slice.metadata.name.clone().unwrap_or_default()
}

/// Every endpoint that is ready (or does not say) and not terminating, as
/// (id, address): the id is the pod's name, or the address without one.
/// Sorted by id; a pod in two slices appears once.
fn ready_addresses<'a>(
    slices: impl Iterator<Item = &'a EndpointSlice>,
) -> Vec<(Arc<str>, SocketAddr)> {
    let mut ready = BTreeMap::new();
    for slice in slices {
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find_map(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let conditions = endpoint.conditions.as_ref();
            let not_ready = conditions.and_then(|c| c.ready) == Some(false);
            let terminating = conditions.and_then(|c| c.terminating) == Some(true);
            if not_ready || terminating {
                continue;
            }
            // All of an endpoint's addresses reach the same pod.
            let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
            else {
                continue;
            };
            let id = endpoint
                .target_ref
                .as_ref()
                .and_then(|t| t.name.clone())
                .unwrap_or_else(|| ip.to_string());
            ready.insert(Arc::<str>::from(id), SocketAddr::new(ip, port));
        }
    }
    ready.into_iter().collect()
}

/// Each pod's in-flight count, kept while the pod stays in the slices: the
/// proxy counts on it, so an update must not reset it.
#[derive(Default)]
struct Loads(HashMap<Arc<str>, Arc<InstanceLoad>>);

impl Loads {
    fn endpoints(&mut self, ready: Vec<(Arc<str>, SocketAddr)>) -> Arc<[Endpoint]> {
        let mut kept = HashMap::with_capacity(ready.len());
        let endpoints: Vec<Endpoint> = ready
            .into_iter()
            .map(|(id, address)| {
                let load = self.0.remove(&id).unwrap_or_default();
                kept.insert(id.clone(), load.clone());
                Endpoint { id, address, load }
            })
            .collect();
        self.0 = kept;
        Arc::from(endpoints)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(json: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json).expect("a slice")
    }

    #[test]
    fn only_ready_serving_pods_count() {
        let slices = [slice(serde_json::json!({
            "metadata": {"name": "hello-00001-private-abcde"},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "pod-a"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": true, "terminating": true}},
                {"addresses": ["10.0.0.4"]},
            ],
        }))];
        let ready = ready_addresses(slices.iter());
        let expected: Vec<(Arc<str>, SocketAddr)> = vec![
            ("10.0.0.4".into(), "10.0.0.4:8080".parse().expect("addr")),
            ("pod-a".into(), "10.0.0.1:8080".parse().expect("addr")),
        ];
        assert_eq!(ready, expected);
    }

    #[test]
    fn loads_survive_updates_of_the_same_pod() {
        let mut loads = Loads::default();
        let address: SocketAddr = "10.0.0.1:8080".parse().expect("addr");
        let first = loads.endpoints(vec![("pod-a".into(), address)]);
        assert!(first[0].load.try_begin());
        let second = loads.endpoints(vec![
            ("pod-a".into(), address),
            ("pod-b".into(), "10.0.0.2:8080".parse().expect("addr")),
        ]);
        assert_eq!(second[0].load.in_flight(), 1);
        assert!(Arc::ptr_eq(&first[0].load, &second[0].load));
    }
}
