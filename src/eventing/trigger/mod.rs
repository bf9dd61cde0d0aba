//! Triggers: filters, delivery and the per-trigger dispatcher.

pub mod dispatcher;
pub mod filter;
