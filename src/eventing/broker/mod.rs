//! Brokers: ingress and the registry of running brokers.
