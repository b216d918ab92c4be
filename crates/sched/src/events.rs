//! What a run reports while it goes: the front end turns these into progress bars, plain lines
//! or JSON.

use std::sync::Arc;
use std::time::Duration;

/// One thing that happened in a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// This process joined the run.
    RunStarted {
        /// The plan's name.
        plan: String,
        /// Whether the run existed already (a resume or a second process).
        resumed: bool,
        /// Whether each batch commits with its progress record (the state lives in the plan's
        /// database), or after it (a separate state database: at-least-once).
        exactly_once: bool,
    },
    /// A step began (or resumed) in this process.
    StepStarted {
        /// The step's name.
        step: String,
        /// Rows counted for the step, when known yet.
        rows_total: Option<i64>,
        /// Rows already done by earlier runs or other processes.
        rows_done: i64,
    },
    /// The step's rows were counted.
    StepEstimate {
        /// The step's name.
        step: String,
        /// Rows the step covers.
        rows_total: i64,
    },
    /// A batch committed.
    BatchDone {
        /// The step's name.
        step: String,
        /// The batch's number.
        batch: i64,
        /// Rows in the batch's range.
        rows: i64,
        /// Rows the statement reported as affected.
        rows_affected: u64,
        /// Rows an optimistic transform found changed since it read them, and transformed
        /// again under lock.
        rows_redone: u64,
        /// Time in the batch's transaction.
        duration: Duration,
    },
    /// A batch began its work in this process (it holds a slot until [`Event::BatchEnded`]).
    BatchStarted {
        /// The step's name.
        step: String,
        /// The batch's number.
        batch: i64,
    },
    /// A batch that began here stopped running, however it ended: committed, retried, failed,
    /// given back or rolled back. Sent after the event that says which.
    BatchEnded {
        /// The step's name.
        step: String,
        /// The batch's number.
        batch: i64,
    },
    /// A batch hit a transient error and will be tried again.
    BatchRetry {
        /// The step's name.
        step: String,
        /// The batch's number.
        batch: i64,
        /// Failed attempts so far.
        attempt: i64,
        /// The error, with the key range and the database's code.
        error: String,
        /// How long before the batch may be claimed again.
        delay: Duration,
    },
    /// A batch failed for good: a permanent error, or its last attempt (the step fails).
    BatchFailed {
        /// The step's name.
        step: String,
        /// The batch's number.
        batch: i64,
        /// The error, with the key range, the attempt and the database's code.
        error: String,
    },
    /// No new batch of the step starts here now: a throttle signal says so (its
    /// `throttle_query`, the replicas' lag, the latency guard's pause).
    StepThrottled {
        /// The step's name.
        step: String,
        /// Why, every signal that says so (as `status` shows it).
        reason: String,
    },
    /// The step's batches start again after [`Event::StepThrottled`], or the step stopped
    /// here (or the run was paused) while throttled.
    StepUnthrottled {
        /// The step's name.
        step: String,
        /// How long the step was throttled.
        throttled_for: Duration,
    },
    /// Every batch of a step is done.
    StepDone {
        /// The step's name.
        step: String,
    },
    /// A step failed for good.
    StepFailed {
        /// The step's name.
        step: String,
        /// Why, with the key range and the database's code.
        error: String,
    },
}

/// Where events go. Sending never blocks the run; a front end that went away is ignored.
#[derive(Clone)]
pub struct EventSink(Option<Arc<dyn Fn(Event) + Send + Sync>>);

impl EventSink {
    /// A sink feeding `sender`.
    pub fn new(sender: tokio::sync::mpsc::UnboundedSender<Event>) -> EventSink {
        EventSink::from_fn(move |event| {
            let _ = sender.send(event);
        })
    }

    /// A sink that calls `receive` with each event, on the scheduler's task that sent it; so
    /// `receive` must be quick and must not block (count, or pass it on through a channel).
    /// What it has seen of a batch is then seen before the run goes on, in order.
    pub fn from_fn(receive: impl Fn(Event) + Send + Sync + 'static) -> EventSink {
        EventSink(Some(Arc::new(receive)))
    }

    /// A sink that drops everything.
    pub fn none() -> EventSink {
        EventSink(None)
    }

    pub(crate) fn send(&self, event: Event) {
        if let Some(receive) = &self.0 {
            receive(event);
        }
    }
}
