//! Trying again: a state write through a short outage, and the backoff between attempts of
//! a batch, a claim or a step's start.

use std::time::Duration;

/// Retries a state write through a short outage (a database restart): the batch's record
/// would otherwise wait for its lease to run out before anyone takes it again.
pub(crate) async fn with_retries<T, F, Fut>(mut write: F) -> Result<T, godwit_driver::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, godwit_driver::Error>>,
{
    let mut attempt = 0;
    loop {
        match write().await {
            Err(e) if e.kind().is_retryable() && attempt < 6 => {
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Exponential backoff with jitter: about 200 ms, 400 ms, 800 ms … capped at 30 s, each drawn
/// between half and all of that so that workers that failed together retry apart.
pub(crate) fn backoff(failed_attempts: i64) -> Duration {
    let exp = failed_attempts.clamp(0, 20) as u32;
    let ceiling = Duration::from_millis(200)
        .saturating_mul(2u32.saturating_pow(exp))
        .min(Duration::from_secs(30));
    let fraction = 0.5 + rand::random::<f64>() * 0.5;
    ceiling.mul_f64(fraction)
}

/// How long a batch that yielded to a lock waits before it is tried again: between a quarter
/// of a second and a second, without growing, since a lock usually goes with the transaction
/// holding it and nothing is lost by looking again soon.
pub(crate) fn yield_backoff() -> Duration {
    Duration::from_millis(250).mul_f64(1.0 + rand::random::<f64>() * 3.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 0..30 {
            let d = backoff(attempt);
            let ceiling = Duration::from_millis(200 * 2u64.pow(attempt.min(20) as u32))
                .min(Duration::from_secs(30));
            assert!(d <= ceiling && d >= ceiling / 2, "{attempt}: {d:?}");
        }
    }
}
