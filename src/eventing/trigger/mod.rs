//! Triggers: filters, delivery and the per-trigger dispatcher.

pub mod filter;
