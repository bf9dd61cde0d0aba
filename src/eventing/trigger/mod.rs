//! Triggers: filters, delivery and the per-trigger dispatcher.

pub(crate) mod dispatcher;
pub(crate) mod filter;
pub(crate) mod journal;
