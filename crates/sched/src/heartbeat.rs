//! This process's pulse in a run: the leases of the batches it holds kept alive, and its
//! heartbeat in `godwit_workers` for `godwit status`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use godwit_state::{ClaimedBatch, WorkerBeat};

use crate::ctx::{host_name, RunCtx};
use crate::stop::StopLevel;

/// How often a worker records its heartbeat in `godwit_workers`.
const BEAT_EVERY: Duration = Duration::from_secs(1);

/// Extends the leases of the batches in flight here, three times per lease, and records this
/// worker's heartbeat every second.
pub(crate) async fn heartbeat(ctx: Arc<RunCtx>) {
    let mut beat = WorkerBeat {
        worker: ctx.worker().to_string(),
        run: ctx.name().to_string(),
        host: host_name(),
        pid: i64::from(std::process::id()),
        version: env!("CARGO_PKG_VERSION").to_string(),
        batches: 0,
        state: String::new(),
    };
    let mut last_beat: Option<std::time::Instant> = None;
    let mut last_extended = std::time::Instant::now();
    loop {
        if last_beat.is_none_or(|t| t.elapsed() >= BEAT_EVERY) {
            last_beat = Some(std::time::Instant::now());
            beat.batches = i64::try_from(ctx.n_running()).unwrap_or_default();
            beat.state = if ctx.stop().level() >= StopLevel::Drain {
                "stopping"
            } else if ctx.is_paused() {
                "paused"
            } else {
                "running"
            }
            .to_string();
            match ctx.state().heartbeat(&beat).await {
                Ok(live) => ctx.pace().set_workers(live),
                Err(e) => tracing::debug!(error = %e, "could not record the heartbeat"),
            }
        }
        let batches = ctx.tracked();
        let shortest = batches
            .iter()
            .map(|(_, lease)| *lease)
            .min()
            .unwrap_or(Duration::from_secs(3));
        let every = (shortest / 3).max(Duration::from_millis(100));
        if last_extended.elapsed() >= every {
            last_extended = std::time::Instant::now();
            // One statement per step for the claims tracked there, running or ahead; by token,
            // so that a claim this process no longer tracks runs out and returns to others.
            let mut steps: HashMap<&str, (Duration, Vec<&ClaimedBatch>)> = HashMap::new();
            for (batch, lease) in &batches {
                steps
                    .entry(batch.step())
                    .or_insert((*lease, Vec::new()))
                    .1
                    .push(batch);
            }
            for (step, (lease, held)) in steps {
                if let Err(e) = ctx.state().extend_leases(&held, lease).await {
                    tracing::warn!(step, error = %e, "could not extend leases");
                }
            }
        }
        tokio::time::sleep(every.min(BEAT_EVERY)).await;
    }
}
