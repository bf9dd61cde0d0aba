//! Delivering one event to one destination with Knative's delivery semantics:
//! retries with linear or exponential backoff, Retry-After, per-attempt
//! timeouts, and dead-letter sinks. Triggers use it, and so do sources: one
//! HTTP client and one retry loop for everything pilotlight sends.

mod in_process;
mod policy;
mod retry;
mod sender;

pub use in_process::MainListenerService;
pub(crate) use policy::DeliveryPolicy;
pub(crate) use retry::{Outcome, dead_letter_event, deliver_with_retries};
pub use sender::EventSender;
pub(crate) use sender::Failure;
pub use sender::Target;
