//! What a godwit process shows of itself while it works: Prometheus metrics at
//! `http://ADDR/metrics` (`godwit run --metrics ADDR`, `godwit worker --metrics ADDR`).
//!
//! [`Metrics`] is fed by the scheduler's [`Event`](godwit_sched::Event)s, the same ones the
//! progress output is drawn from, so the metrics count what the run reports and nothing the
//! front end does not see; [`listen`] and [`serve`] put them on HTTP. Every figure is this
//! process's own since it started: Prometheus sums the workers of a fleet, and the state
//! database (`godwit status`) holds the run's totals.
//!
//! The text exposition format is written here by hand (`text.rs`) rather than with a client
//! library: five families of fixed shape need a few dozen lines, and a registry of its own
//! would sit beside the one that matters, the scheduler's events.
#![deny(missing_docs)]

mod http;
mod metrics;
mod text;

pub use crate::http::{listen, serve, ListenError};
pub use crate::metrics::{Metrics, DURATION_BUCKETS};
