//! Knative's KPA autoscaler (being written).
