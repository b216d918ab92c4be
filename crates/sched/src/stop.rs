//! How a run is asked to stop: first politely (finish the batches in flight), then at once.

use tokio::sync::watch;

/// How far a stop request has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopLevel {
    /// Keep working.
    Run,
    /// Claim nothing new; let the batches in flight commit.
    Drain,
    /// Abandon the batches in flight: their transactions roll back.
    Abort,
}

/// The sending side, held by whoever decides to stop (signal handlers, a time budget).
#[derive(Clone)]
pub struct StopHandle(watch::Sender<StopLevel>);

/// The receiving side, held by the scheduler.
#[derive(Clone)]
pub struct StopSignal(watch::Receiver<StopLevel>);

/// A connected pair.
pub fn stop_pair() -> (StopHandle, StopSignal) {
    let (tx, rx) = watch::channel(StopLevel::Run);
    (StopHandle(tx), StopSignal(rx))
}

impl StopHandle {
    /// Raises the stop level; it never goes back down.
    pub fn request(&self, level: StopLevel) {
        self.0.send_if_modified(|current| {
            let raise = level > *current;
            if raise {
                *current = level;
            }
            raise
        });
    }

    /// The current level.
    pub fn level(&self) -> StopLevel {
        *self.0.borrow()
    }
}

impl StopSignal {
    /// The current level.
    pub fn level(&self) -> StopLevel {
        *self.0.borrow()
    }

    /// Waits until the level reaches at least `level`.
    pub async fn reached(&mut self, level: StopLevel) {
        let _ = self.0.wait_for(|l| *l >= level).await;
    }
}
