//! The control plane: Knative manifests in, running brokers and triggers out,
//! with status conditions for each object.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The identity of a namespaced object of one kind: `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

pub mod admin;
pub mod kubernetes;
pub mod manifest;
pub mod objects;
pub mod reconcile;
pub mod resources;
pub mod serving;
pub mod sources;
pub mod status;
pub mod watch;
