//! What a run reports while it goes: the front end turns these into progress bars, plain lines
//! or JSON.

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
pub struct EventSink(Option<tokio::sync::mpsc::UnboundedSender<Event>>);

impl EventSink {
    /// A sink feeding `sender`.
    pub fn new(sender: tokio::sync::mpsc::UnboundedSender<Event>) -> EventSink {
        EventSink(Some(sender))
    }

    /// A sink that drops everything.
    pub fn none() -> EventSink {
        EventSink(None)
    }

    pub(crate) fn send(&self, event: Event) {
        if let Some(sender) = &self.0 {
            let _ = sender.send(event);
        }
    }
}
