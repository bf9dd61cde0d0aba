//! Tracing and metrics set-up.
