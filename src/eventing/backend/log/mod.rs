//! The `log` backend: a durable segmented log on local disk.
