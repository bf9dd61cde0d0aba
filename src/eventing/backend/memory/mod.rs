//! The `memory` backend: the local backend's semantics (cursors, acks, ordering,
//! fan-out index) with no durability. For tests and throwaway runs: everything
//! is lost when pilotlight stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::local::{LocalBackend, LocalConfig, Store, StoreError};
use super::{Backend, BackendPlan, PlanContext, StartError, same_plan};
use crate::api::broker::BrokerClass;
use crate::cloudevent::Event;

/// Retention of the memory backend: events every trigger is done with are
/// dropped at once; undelivered ones are kept up to these limits.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryConfig {
    pub max_bytes: usize,
    pub max_age: Option<Duration>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            max_bytes: 256 << 20,
            max_age: None,
        }
    }
}

pub(crate) fn plan(context: &PlanContext<'_>) -> Result<Box<dyn BackendPlan>, String> {
    Ok(Box::new(context.memory.clone()))
}

/// A memory broker's plan is its retention.
#[async_trait::async_trait]
impl BackendPlan for MemoryConfig {
    fn class(&self) -> BrokerClass {
        BrokerClass::Memory
    }

    async fn start(&self) -> Result<Arc<dyn Backend>, StartError> {
        Ok(Arc::new(
            start(self).map_err(|e| StartError::Failed(e.to_string()))?,
        ))
    }

    fn same_as(&self, other: &dyn BackendPlan) -> bool {
        same_plan(self, other)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Starts a memory backend.
pub(crate) fn start(config: &MemoryConfig) -> Result<LocalBackend<MemoryStore>, StoreError> {
    LocalBackend::start(
        MemoryStore,
        LocalConfig {
            tail_bytes: config.max_bytes,
            max_age: config.max_age,
            ..LocalConfig::default()
        },
    )
}

/// The memory backend keeps events only in the local backend's tail.
pub(crate) struct MemoryStore;

impl Store for MemoryStore {
    const DURABLE: bool = false;

    fn append(&self, _events: &[Arc<Event>]) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn read(&self, _from: u64, _max: usize) -> Result<Vec<(u64, Event)>, StoreError> {
        Ok(Vec::new())
    }

    fn bounds(&self) -> (u64, u64) {
        (0, 0)
    }

    /// Never asked: the local backend searches its tail, which is all a
    /// memory broker holds.
    fn offset_at(&self, _time_ms: i64) -> Result<u64, StoreError> {
        Ok(0)
    }

    fn enforce_retention(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn load_cursors(&self) -> Result<HashMap<String, u64>, StoreError> {
        Ok(HashMap::new())
    }

    fn save_cursors(&self, _cursors: &HashMap<String, u64>) -> Result<(), StoreError> {
        Ok(())
    }

    fn destroy(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
