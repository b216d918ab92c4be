//! Worker heartbeats: who is alive, on which run, holding how many batches (`godwit_workers`).

use godwit_driver::{number_placeholders, Result, Value};

use crate::{schema, text, StateStore, WorkerBeat, LIVE_WINDOW_MS};

impl StateStore {
    /// Records that `beat.worker` is alive and what it holds; called every second or so.
    /// Returns how many workers of its run are alive (it included), which share the run's rate
    /// limit.
    pub async fn heartbeat(&self, beat: &WorkerBeat) -> Result<u64> {
        let beat = beat.clone();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let now = schema::now_ms(d);
                let updated = conn
                    .execute(
                        &number_placeholders(&format!(
                                "UPDATE godwit_workers SET heartbeat_ms = {now}, batches = ?, state = ? \
                                 WHERE worker = ?"
                            ), d),
                        &[
                            Value::Int(beat.batches),
                            text(beat.state.clone()),
                            text(beat.worker.clone()),
                        ],
                    )
                    .await?;
                if updated == 0 {
                    // A worker's first beat. Rows of workers silent for a day go at the same
                    // time, so the table does not grow with every pod that ever ran.
                    conn.execute(
                        &number_placeholders(
                            &format!("DELETE FROM godwit_workers WHERE heartbeat_ms < {now} - 86400000"),
                            d,
                        ),
                        &[],
                    )
                    .await?;
                    conn.execute(
                        &number_placeholders(&format!(
                                "INSERT INTO godwit_workers (worker, run, host, pid, version, started_ms, \
                                 heartbeat_ms, batches, state) VALUES (?, ?, ?, ?, ?, {now}, {now}, ?, ?)"
                            ), d),
                        &[
                            text(beat.worker.clone()),
                            text(beat.run.clone()),
                            text(beat.host),
                            Value::Int(beat.pid),
                            text(beat.version),
                            Value::Int(beat.batches),
                            text(beat.state.clone()),
                        ],
                    )
                    .await?;
                }
                let live = conn
                    .query(
                        &number_placeholders(
                            &format!(
                                "SELECT COUNT(*) FROM godwit_workers \
                                 WHERE run = ? AND heartbeat_ms >= {now} - {LIVE_WINDOW_MS}"
                            ),
                            d,
                        ),
                        &[text(beat.run)],
                    )
                    .await?;
                let n = live
                    .first()
                    .and_then(|r| r.get(0).as_i64())
                    .unwrap_or(1);
                Ok(u64::try_from(n).unwrap_or(1).max(1))
            })
        })
        .await
    }

    /// Forgets a worker that is leaving.
    pub async fn remove_worker(&self, worker: &str) -> Result<()> {
        self.execute(
            "DELETE FROM godwit_workers WHERE worker = ?",
            vec![text(worker)],
        )
        .await
        .map(drop)
    }
}
