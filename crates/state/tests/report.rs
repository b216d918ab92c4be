//! What `godwit report` reads, on each real database: a run's durations and counts per step
//! (rows, batches, retries, skipped rows, the longest batch, the workers), how its ETA moved
//! (reconstructed from batch times the test sets), and the estimates `godwit estimate`
//! records, the last one before the run started.

mod common;

use std::time::Duration;

use common::{connect, db, isolated, range, started_step, store, ClaimOne, Db, LEASE};
use godwit_driver::{Error, ErrorKind, Value};
use godwit_state::{BatchOutcome, ClaimedBatch, Estimate, StateStore, StepEstimate};

fn outcome(rows_affected: u64, ms: u64, rows_skipped: u64) -> BatchOutcome {
    BatchOutcome {
        rows_affected,
        duration: Duration::from_millis(ms),
        rows_skipped,
    }
}

async fn claim(state: &StateStore, run: &str, a: i64, b: i64, worker: &str) -> ClaimedBatch {
    let record = state.step_record(run, "s").await.unwrap();
    state
        .claim_new(run, "s", &record, range(a, b, false), worker, LEASE)
        .await
        .unwrap()
        .expect("claimed")
}

/// Runs `sql` with `params` (written with `?`) on the test's database.
async fn exec(db: &Db, sql: &str, params: &[Value]) {
    let mut conn = connect(db).await;
    let q = godwit_driver::number_placeholders(sql, conn.dialect());
    conn.execute(&q, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Four batches by two workers: one done at once, one done on its second attempt (after a
/// transient error) with two rows skipped, one failed for good, one done by the other
/// worker. The timings count what happened, batch by batch.
async fn timings_count_what_the_batches_did(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let (run, _) = started_step(&state, "40").await;
    let first = claim(&state, &run, 1, 10, "w1").await;
    let retried = claim(&state, &run, 11, 20, "w2").await;
    let failed = claim(&state, &run, 21, 30, "w1").await;
    let last = claim(&state, &run, 31, 40, "w2").await;
    assert!(state
        .record_done_here(&first, outcome(10, 120, 0))
        .await
        .unwrap());
    let transient = Error::new(ErrorKind::Transient, Some("40001".into()), "serialization");
    state
        .record_failure(&retried, &transient, Some(Duration::ZERO))
        .await
        .unwrap();
    // Claimable once the state database's clock has moved past the zero backoff.
    let again = loop {
        if let Some(b) = state.claim_abandoned(&run, "s", "w2", LEASE).await.unwrap() {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!((again.number(), again.attempts()), (retried.number(), 1));
    assert!(state
        .record_done_here(&again, outcome(8, 300, 2))
        .await
        .unwrap());
    let permanent = Error::new(ErrorKind::Permanent, Some("23514".into()), "check");
    state
        .record_failure(&failed, &permanent, None)
        .await
        .unwrap();
    assert!(state
        .record_done_here(&last, outcome(10, 50, 0))
        .await
        .unwrap());

    let timings = state.run_timings(&run).await.unwrap().expect("the run");
    assert_eq!(timings.state, "running");
    assert!(timings.started_ms.is_some() && timings.finished_ms.is_none());
    let s = &timings.steps[0];
    assert_eq!(
        (
            s.name.as_str(),
            s.state.as_str(),
            s.batches,
            s.batches_failed
        ),
        ("s", "running", 3, 1)
    );
    assert_eq!((s.rows, s.rows_affected, s.rows_skipped), (30, 28, 2));
    // The retried batch's failed attempt; the batch failed for good was not tried again.
    assert_eq!(s.retries, 1);
    assert_eq!(s.longest_batch_ms, Some(300));
    let workers: Vec<(&str, i64, i64)> = s
        .workers
        .iter()
        .map(|w| (w.worker.as_str(), w.batches, w.rows))
        .collect();
    assert_eq!(workers, vec![("w1", 1, 10), ("w2", 2, 20)]);
    assert!(state.run_timings("no-such-run").await.unwrap().is_none());
}

/// A step of 1,000 rows that started at T+1 s: four batches of 100 rows a second, then six
/// of 100 rows every five seconds, done at T+35 s. At each whole second its ETA is the rows
/// left over the rate of the batches finished in the last 30 seconds, measured from the
/// first of them to start: it moves later as the step slows.
async fn eta_history_follows_the_recent_rate(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let (run, _) = started_step(&state, "100").await;
    let mut batches = Vec::new();
    for k in 0..10 {
        let batch = claim(&state, &run, k * 10 + 1, k * 10 + 10, "w").await;
        assert!(state
            .record_done_here(&batch, outcome(10, 10, 0))
            .await
            .unwrap());
        batches.push(batch);
    }
    // Times of the test's own, far from now: whole seconds since T.
    let t = 1_600_000_000_000_i64;
    for (k, batch) in batches.iter().enumerate() {
        let k = k as i64 + 1;
        let (claimed, finished) = if k <= 4 {
            (k * 1000, k * 1000 + 900)
        } else {
            let j = k - 4;
            (5000 * j, 5000 * j + 4900)
        };
        exec(
            &db,
            "UPDATE godwit_batches SET n_rows = 100, claimed_ms = ?, finished_ms = ? \
             WHERE run = ? AND step = 's' AND batch = ?",
            &[
                Value::Int(t + claimed),
                Value::Int(t + finished),
                Value::Text(run.clone()),
                Value::Int(batch.number()),
            ],
        )
        .await;
    }
    exec(
        &db,
        "UPDATE godwit_steps SET rows_total = 1000, started_ms = ?, finished_ms = ?, \
         state = 'done' WHERE run = ?",
        &[
            Value::Int(t + 1000),
            Value::Int(t + 35_000),
            Value::Text(run.clone()),
        ],
    )
    .await;

    let history = state.eta_history(&run).await.unwrap();
    assert_eq!(history.len(), 1);
    let points = &history[0].points;
    let at: Vec<i64> = points.iter().map(|p| (p.at_ms - t) / 1000).collect();
    assert_eq!(at, (2..=34).collect::<Vec<i64>>(), "a point each second");
    let point = |s: i64| &points[(s - 2) as usize];
    // 400 rows in the 4 s since the first batch started: 100 rows/s, 600 rows left.
    assert_eq!(
        (
            point(5).rows_left,
            point(5).rows_per_second,
            point(5).eta_seconds
        ),
        (600, 100.0, Some(6.0))
    );
    assert_eq!(point(5).actual_seconds_left, Some(30.0));
    // No batch in the second after: the same rows over a longer time, a later ETA.
    assert_eq!(
        (point(6).rows_per_second, point(6).eta_seconds),
        (80.0, Some(7.5))
    );
    // The first slow batch: 500 rows in 9 s.
    assert_eq!(
        (point(10).rows_left, point(10).eta_seconds),
        (500, Some(9.0))
    );
    // At 34 s the window (from 4 s) holds the last fast batch and five slow ones.
    assert_eq!(
        (
            point(34).rows_left,
            point(34).rows_per_second,
            point(34).eta_seconds
        ),
        (100, 20.0, Some(5.0))
    );
}

fn estimate(projected: f64) -> Estimate {
    Estimate {
        projected_seconds: projected,
        low_seconds: projected * 0.9,
        high_seconds: projected * 1.2,
        steps: vec![
            StepEstimate {
                name: "s".into(),
                projected_seconds: projected - 1.5,
                low_seconds: projected * 0.8,
                high_seconds: projected,
                rows_estimate: Some(666_666),
                sampled_batches: Some(20),
            },
            StepEstimate {
                name: "index".into(),
                projected_seconds: 1.5,
                low_seconds: 1.0,
                high_seconds: 2.0,
                rows_estimate: None,
                sampled_batches: None,
            },
        ],
    }
}

/// Estimates are kept whole, per run; the report takes the last one recorded before the run
/// started, not one recorded since.
async fn the_estimate_before_the_run_is_found(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let (run, _) = started_step(&state, "100").await;
    assert_eq!(state.last_estimate(&run).await.unwrap(), None);
    let before = state.record_estimate(&run, &estimate(41.0)).await.unwrap();
    // The next estimate is recorded once the state database's clock is past the first's
    // next millisecond, in which the run is then said to have started.
    while state.run_timings(&run).await.unwrap().expect("run").now_ms <= before + 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let newer = state.record_estimate(&run, &estimate(30.5)).await.unwrap();
    assert!(newer > before + 1);
    exec(
        &db,
        "UPDATE godwit_runs SET started_ms = ? WHERE run = ?",
        &[Value::Int(before + 1), Value::Text(run.clone())],
    )
    .await;
    let started = state
        .run_timings(&run)
        .await
        .unwrap()
        .and_then(|t| t.started_ms)
        .expect("started");
    let found = state
        .estimate_before(&run, started)
        .await
        .unwrap()
        .expect("an estimate before the run");
    assert_eq!(found.recorded_ms, before);
    assert_eq!(found.estimate, estimate(41.0), "kept whole, steps in order");
    let last = state.last_estimate(&run).await.unwrap().expect("the last");
    assert_eq!(last.estimate.projected_seconds, 30.5);
    assert_eq!(state.estimate_before(&run, before).await.unwrap(), None);
    assert_eq!(
        state.last_estimate("another-plan").await.unwrap(),
        None,
        "estimates are per run"
    );
}

/// Tables of version 7 have no `godwit_estimates`: a reader finds no estimate and creates
/// nothing; opening them for work adds the table.
async fn version_7_tables_get_the_estimates_table(backend: &str) {
    let iso = isolated(backend).await;
    let db = &iso.db;
    let state = store(db).await;
    let (run, _) = started_step(&state, "100").await;
    drop(state);
    let mut conn = connect(db).await;
    for statement in [
        "DROP TABLE godwit_estimates",
        "UPDATE godwit_meta SET value = '7' WHERE name = 'schema_version'",
    ] {
        conn.execute_unprepared(statement).await.unwrap();
    }
    let reader = StateStore::open_reader(&db.url, connect(db).await)
        .await
        .unwrap();
    assert_eq!(reader.last_estimate(&run).await.unwrap(), None);
    assert!(reader.run_timings(&run).await.unwrap().is_some());
    assert!(
        conn.table_info("godwit_estimates").await.unwrap().is_none(),
        "a reader creates nothing"
    );
    let state = store(db).await;
    assert!(conn.table_info("godwit_estimates").await.unwrap().is_some());
    state.record_estimate(&run, &estimate(12.0)).await.unwrap();
    assert_eq!(
        reader
            .last_estimate(&run)
            .await
            .unwrap()
            .map(|e| e.estimate.projected_seconds),
        Some(12.0),
        "the reader opened on version 7 notices the migration"
    );
}

per_backend!(
    timings_count_what_the_batches_did,
    eta_history_follows_the_recent_rate,
    the_estimate_before_the_run_is_found,
    version_7_tables_get_the_estimates_table,
);
