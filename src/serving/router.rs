//! Host-based routing: `{service}.{namespace}.{domain}` spreads requests over
//! the service's traffic targets, `{tag}-{service}.{namespace}.{domain}` goes
//! to one tagged target. The table is rebuilt whole on every change and
//! swapped in, so a request reads it with one lock-free-in-practice Arc clone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::revision::Revision;
use crate::api::ObjectKey;

/// Where one host's requests go.
pub(crate) struct HostRoute {
    pub service: ObjectKey,
    targets: Vec<Arc<Revision>>,
    /// 100 slots, each an index into `targets`, interleaved so that any run of
    /// requests is split close to the percentages (smooth weighted round robin).
    slots: Box<[u8]>,
    next: AtomicUsize,
}

impl HostRoute {
    /// `weighted`: revisions with their percent; those with 0 get nothing.
    pub(crate) fn new(service: ObjectKey, weighted: Vec<(Arc<Revision>, u32)>) -> Self {
        let weights: Vec<u32> = weighted.iter().map(|(_, p)| *p).collect();
        HostRoute {
            service,
            slots: smooth_slots(&weights),
            targets: weighted.into_iter().map(|(r, _)| r).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The revision for the next request.
    pub(crate) fn pick(&self) -> Option<&Arc<Revision>> {
        if self.slots.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        self.targets.get(usize::from(self.slots[n]))
    }
}

/// Spreads 100 slots over targets by weight, nginx's smooth weighted round
/// robin: interleaved, and exact over every 100 requests.
fn smooth_slots(weights: &[u32]) -> Box<[u8]> {
    let total: i64 = weights.iter().map(|w| i64::from(*w)).sum();
    if total == 0 || weights.len() > usize::from(u8::MAX) {
        return Box::new([]);
    }
    let mut current = vec![0i64; weights.len()];
    (0..total)
        .filter_map(|_| {
            for (c, w) in current.iter_mut().zip(weights) {
                *c += i64::from(*w);
            }
            let (best, _) = current
                .iter()
                .enumerate()
                .max_by_key(|(i, c)| (**c, -(*i as i64)))?;
            current[best] -= total;
            u8::try_from(best).ok()
        })
        .collect()
}

/// What a Host header means.
pub(crate) enum HostMatch {
    Route(Arc<HostRoute>),
    /// Under the serving domain but no such service or tag.
    Unknown,
    /// Not a serving host: the broker ingress handles it.
    NotServing,
}

/// All hosts, rebuilt on every change.
#[derive(Default)]
pub(crate) struct RouteTable {
    hosts: HashMap<String, Arc<HostRoute>>,
}

impl RouteTable {
    pub(crate) fn insert(&mut self, host: String, route: HostRoute) {
        self.hosts.insert(host, Arc::new(route));
    }
}

/// The table in use, swapped whole by the control plane.
pub(crate) struct Router {
    domain: String,
    table: RwLock<Arc<RouteTable>>,
}

impl Router {
    pub(crate) fn new(domain: &str) -> Self {
        Router {
            domain: domain.to_ascii_lowercase(),
            table: RwLock::new(Arc::new(RouteTable::default())),
        }
    }

    /// The host of a service (`tag` None) or of one of its tags.
    pub(crate) fn host(&self, service: &ObjectKey, tag: Option<&str>) -> String {
        match tag {
            None => format!("{}.{}.{}", service.name, service.namespace, self.domain),
            Some(tag) => format!(
                "{tag}-{}.{}.{}",
                service.name, service.namespace, self.domain
            ),
        }
    }

    pub(crate) fn replace(&self, table: RouteTable) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
    }

    /// Matches a Host header (port and case ignored).
    pub(crate) fn lookup(&self, host: &str) -> HostMatch {
        let host = strip_port(host);
        let Some(_name) = host
            .len()
            .checked_sub(self.domain.len() + 1)
            .filter(|&cut| {
                host.as_bytes()[cut] == b'.' && host[cut + 1..].eq_ignore_ascii_case(&self.domain)
            })
            .map(|cut| &host[..cut])
        else {
            return HostMatch::NotServing;
        };
        let table = self.table.read().unwrap_or_else(|e| e.into_inner()).clone();
        let found = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            table.hosts.get(&host.to_ascii_lowercase())
        } else {
            table.hosts.get(host)
        };
        match found {
            Some(route) => HostMatch::Route(route.clone()),
            None => HostMatch::Unknown,
        }
    }

    /// The 404 text for a host under the domain that matches nothing.
    pub(crate) fn unknown_host_message(&self, host: &str) -> String {
        let domain = &self.domain;
        format!(
            "no service answers to host '{}'. Service hosts are {{service}}.{{namespace}}.{domain}, and {{tag}}-{{service}}.{{namespace}}.{domain} for a traffic tag; `pilotlight get ksvc` lists them.\n",
            strip_port(host)
        )
    }
}

fn strip_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_percentages_and_interleave() {
        let slots = smooth_slots(&[90, 10]);
        assert_eq!(slots.len(), 100);
        assert_eq!(slots.iter().filter(|s| **s == 1).count(), 10);
        // Interleaved: the ten go to target 1 spread out, not in one run.
        let first_half = slots[..50].iter().filter(|s| **s == 1).count();
        assert_eq!(first_half, 5);
        let thirds = smooth_slots(&[34, 33, 33]);
        assert_eq!(thirds.iter().filter(|s| **s == 2).count(), 33);
        assert!(smooth_slots(&[0, 0]).is_empty());
    }

    #[test]
    fn hosts_under_the_domain_are_serving_hosts() {
        let router = Router::new("localhost");
        assert!(matches!(
            router.lookup("hello.default.localhost:8080"),
            HostMatch::Unknown
        ));
        assert!(matches!(
            router.lookup("Hello.Default.LOCALHOST"),
            HostMatch::Unknown
        ));
        assert!(matches!(
            router.lookup("localhost:8080"),
            HostMatch::NotServing
        ));
        assert!(matches!(
            router.lookup("127.0.0.1:8080"),
            HostMatch::NotServing
        ));
        assert!(matches!(
            router.lookup("notlocalhost"),
            HostMatch::NotServing
        ));
        assert!(
            router
                .unknown_host_message("x.localhost:80")
                .contains("{service}.{namespace}.localhost")
        );
    }
}
