//! What the dashboard reads on each real database: rows done over time, summed per step and
//! bucket in the database (MySQL's integer division differs), and the batches that met errors.

mod common;

use std::time::Duration;

use common::{db, range, started_step, store, ClaimOne, LEASE};
use godwit_driver::{Error, ErrorKind};
use godwit_state::BatchOutcome;

/// Three batches done (rows 10, 10, 5), one failed for good, one waiting for a retry: the
/// throughput adds up to the rows done, in whole-second buckets on the state database's clock;
/// the errors list the two that are not done, with keys, attempts and the database's code.
async fn throughput_and_errors_add_up(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let (run, mut record) = started_step(&state, "100").await;
    let mut batches = Vec::new();
    for (a, b) in [(1, 10), (11, 20), (21, 25), (26, 30), (31, 40)] {
        let batch = state
            .claim_new(&run, "s", &record, range(a, b, b == 40), "w", LEASE)
            .await
            .unwrap()
            .expect("claimed");
        record = state.step_record(&run, "s").await.unwrap();
        batches.push(batch);
    }
    let empty = state.throughput(&run).await.unwrap();
    assert!(empty.points.is_empty(), "{empty:?}");
    for batch in &batches[..3] {
        let outcome = BatchOutcome {
            rows_affected: batch.n_rows() as u64,
            duration: Duration::from_millis(5),
            rows_skipped: 0,
        };
        assert!(state.record_done_here(batch, outcome).await.unwrap());
    }
    let permanent = Error::new(ErrorKind::Permanent, Some("23502".into()), "null value");
    state
        .record_failure(&batches[3], &permanent, None)
        .await
        .unwrap();
    let transient = Error::new(ErrorKind::Transient, Some("40P01".into()), "deadlock");
    state
        .record_failure(&batches[4], &transient, Some(Duration::from_secs(60)))
        .await
        .unwrap();

    let t = state.throughput(&run).await.unwrap();
    assert_eq!(t.bucket_seconds, 1.0, "{t:?}");
    assert_eq!(t.points.iter().map(|p| p.rows).sum::<i64>(), 25, "{t:?}");
    assert!(
        t.points
            .iter()
            .all(|p| p.step == "s" && p.at_ms % 1000 == 0),
        "{t:?}"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        t.points.iter().all(|p| (now_ms - p.at_ms).abs() < 120_000),
        "{t:?}"
    );

    let errors = state.batch_errors(&run, 10).await.unwrap();
    let mut seen: Vec<(String, String, i64, Option<String>)> = errors
        .iter()
        .map(|e| {
            (
                e.start_key.clone().unwrap_or_default(),
                e.state.clone(),
                e.attempts,
                e.error_code.clone(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (
                "26".to_string(),
                "failed".to_string(),
                1,
                Some("23502".to_string())
            ),
            (
                "31".to_string(),
                "pending".to_string(),
                1,
                Some("40P01".to_string())
            ),
        ]
    );
    assert!(errors.iter().any(|e| e.error.contains("deadlock")));
    assert_eq!(
        state.batch_errors(&run, 1).await.unwrap().len(),
        1,
        "the limit holds"
    );
}

per_backend!(throughput_and_errors_add_up);
