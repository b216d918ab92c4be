//! The slots batches run in (`--concurrency`), resized while the run goes on (`godwit set
//! --concurrency`): more slots are free at once; fewer are taken away as batches in flight give
//! theirs back, so no batch is stopped to shrink.

use std::sync::Arc;

use tokio::sync::{Mutex, Semaphore};

/// Batch slots of this process.
#[derive(Clone)]
pub(crate) struct Slots {
    permits: Arc<Semaphore>,
    /// How many slots there are once every resize is through; resizes take turns.
    size: Arc<Mutex<usize>>,
}

impl Slots {
    pub(crate) fn new(permits: Arc<Semaphore>, size: usize) -> Slots {
        Slots {
            permits,
            size: Arc::new(Mutex::new(size)),
        }
    }

    pub(crate) fn permits(&self) -> Arc<Semaphore> {
        self.permits.clone()
    }

    /// Makes `n` slots (at least one). Returns at once; shrinking completes as batches end.
    pub(crate) fn resize(&self, n: usize) {
        let n = n.max(1);
        let (permits, size) = (self.permits.clone(), self.size.clone());
        tokio::spawn(async move {
            let mut size = size.lock().await;
            if n > *size {
                permits.add_permits(n - *size);
            } else if n < *size {
                let fewer = u32::try_from(*size - n).unwrap_or(u32::MAX);
                match permits.acquire_many(fewer).await {
                    Ok(taken) => taken.forget(),
                    Err(_) => return,
                }
            } else {
                return;
            }
            tracing::info!(from = *size, to = n, "batches in flight changed");
            *size = n;
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Waits until `slots` has `free` free slots, for at most a second.
    async fn until_free(slots: &Slots, free: usize) {
        for _ in 0..100 {
            if slots.permits().available_permits() == free {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{} free slots, not {free}",
            slots.permits().available_permits()
        );
    }

    #[tokio::test]
    async fn grows_at_once_and_shrinks_as_batches_give_their_slots_back() {
        let slots = Slots::new(Arc::new(Semaphore::new(2)), 2);
        let a = slots.permits().acquire_owned().await.unwrap();
        let b = slots.permits().acquire_owned().await.unwrap();
        slots.resize(4);
        until_free(&slots, 2).await;
        // Down to one: the two free slots go at once, a third when a batch ends.
        slots.resize(1);
        until_free(&slots, 0).await;
        drop(a);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(slots.permits().available_permits(), 0, "taken away");
        drop(b);
        until_free(&slots, 1).await;
    }
}
