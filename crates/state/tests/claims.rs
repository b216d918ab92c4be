//! The claim protocol on each real database: compare-and-set claims, leases, fencing,
//! retries, completion and status.

mod common;

use std::time::Duration;

use common::{connect, db, range, run_name, spec, started_step, store, ClaimOne, Db, LEASE};
use godwit_driver::Error;
use godwit_state::{
    BatchOutcome, Control, Restart, RunStart, RunState, StateStore, StepCompletion, WalkedClaim,
};

async fn claims_are_compare_and_set_and_fenced(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let run = run_name();
    assert_eq!(
        state
            .begin_run(&spec(&run, "v1"), Restart::Resume)
            .await
            .unwrap(),
        RunStart::Created
    );
    assert_eq!(
        state
            .begin_run(&spec(&run, "v1"), Restart::Resume)
            .await
            .unwrap(),
        RunStart::Resumed
    );
    let changed = state
        .begin_run(&spec(&run, "v2"), Restart::Resume)
        .await
        .unwrap_err();
    assert!(
        changed.to_string().contains("step \"s\" changed"),
        "{changed}"
    );

    let record = state
        .init_step(&run, "s", Some("int"), Some("100"), false)
        .await
        .unwrap();
    assert!(record.initialized && !record.exhausted && record.next_batch == 0);
    // A second initializer reads the first one's values back.
    let again = state
        .init_step(&run, "s", Some("int"), Some("999"), false)
        .await
        .unwrap();
    assert_eq!(again.upper_key.as_deref(), Some("100"));

    let first = state
        .claim_new(&run, "s", &record, range(1, 10, false), "w1", LEASE)
        .await
        .unwrap();
    let first = first.expect("first claim");
    // The same stale record cannot claim again: the cursor moved.
    let stale = state
        .claim_new(&run, "s", &record, range(1, 10, false), "w2", LEASE)
        .await
        .unwrap();
    assert!(stale.is_none(), "a stale cursor must not claim");
    let record = state.step_record(&run, "s").await.unwrap();
    assert_eq!(
        (record.next_batch, record.cursor_key.as_deref()),
        (1, Some("10"))
    );

    // Fencing: a batch taken over after its lease ran out cannot be recorded by its old holder.
    let second = state
        .claim_new(
            &run,
            "s",
            &record,
            range(11, 20, false),
            "w1",
            Duration::from_millis(1),
        )
        .await
        .unwrap()
        .expect("second claim");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let taken = state
        .claim_abandoned(&run, "s", "w2", LEASE)
        .await
        .unwrap()
        .expect("expired lease is taken over");
    assert_eq!(taken.number(), second.number());
    assert!(
        !state.extend_lease(&second, LEASE).await.unwrap(),
        "the old holder lost its lease"
    );
    let outcome = BatchOutcome {
        rows_affected: 10,
        duration: Duration::from_millis(5),
        rows_skipped: 0,
    };
    let mut conn = connect(&db).await;
    conn.begin(Default::default()).await.unwrap();
    assert!(
        !StateStore::record_done(conn.as_mut(), &second, outcome)
            .await
            .unwrap(),
        "old token fenced"
    );
    conn.rollback().await.unwrap();
    assert!(state.record_done_here(&taken, outcome).await.unwrap());
    assert!(state.record_done_here(&first, outcome).await.unwrap());
    // An error reported after the commit went through (a connection lost during COMMIT) must
    // not put a done batch back in the queue.
    let lost = Error::new(
        godwit_driver::ErrorKind::Connection,
        None,
        "connection reset",
    );
    state
        .record_failure(&first, &lost, Some(Duration::ZERO))
        .await
        .unwrap();
    assert!(
        state
            .claim_abandoned(&run, "s", "w3", LEASE)
            .await
            .unwrap()
            .is_none(),
        "a done batch was re-queued"
    );
    // Recording twice is refused: the batch is no longer claimed.
    assert!(!state.record_done_here(&first, outcome).await.unwrap());

    let status = state.status(&run).await.unwrap().expect("status");
    assert_eq!(
        (status.steps[0].batches_done, status.steps[0].rows_done),
        (2, 20)
    );
}

async fn retries_release_and_completion(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let (run, record) = started_step(&state, "20").await;
    let a = state
        .claim_new(&run, "s", &record, range(1, 10, false), "w", LEASE)
        .await
        .unwrap()
        .unwrap();
    let record = state.step_record(&run, "s").await.unwrap();
    let b = state
        .claim_new(&run, "s", &record, range(11, 20, true), "w", LEASE)
        .await
        .unwrap()
        .unwrap();
    assert!(
        state.step_record(&run, "s").await.unwrap().exhausted,
        "the last range exhausts the walk"
    );

    // A transient failure releases the batch after a backoff; not claimable before it.
    let transient = Error::new(
        godwit_driver::ErrorKind::Transient,
        Some("40P01".into()),
        "deadlock detected",
    );
    state
        .record_failure(&a, &transient, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(
        state
            .claim_abandoned(&run, "s", "w", LEASE)
            .await
            .unwrap()
            .is_none(),
        "backoff respected"
    );
    assert_eq!(
        state.complete_step(&run, "s").await.unwrap(),
        StepCompletion::Waiting
    );

    // A released batch is claimable at once and keeps its attempt count.
    state.release(&b).await.unwrap();
    let b2 = state
        .claim_abandoned(&run, "s", "w", LEASE)
        .await
        .unwrap()
        .expect("released batch");
    assert_eq!((b2.number(), b2.attempts()), (b.number(), 0));

    // A permanent failure fails the step with the range and the database's code.
    let permanent = Error::new(
        godwit_driver::ErrorKind::Permanent,
        Some("23505".into()),
        "duplicate key",
    );
    state.record_failure(&b2, &permanent, None).await.unwrap();
    match state.complete_step(&run, "s").await.unwrap() {
        StepCompletion::Failed(message) => {
            assert!(
                message.contains("11..=20") && message.contains("[23505]"),
                "{message}"
            )
        }
        other => panic!("expected a failed step, got {other:?}"),
    }
    let status = state.status(&run).await.unwrap().unwrap();
    assert_eq!(status.steps[0].batches_failed, 1);

    // A re-run re-queues failed batches.
    assert_eq!(state.requeue_failed(&run).await.unwrap(), 1);
    let again = state
        .claim_abandoned(&run, "s", "w", LEASE)
        .await
        .unwrap()
        .expect("re-queued");
    assert_eq!(again.number(), b.number());
    assert!(state
        .record_done_here(
            &again,
            BatchOutcome {
                rows_affected: 1,
                duration: Duration::ZERO,
                rows_skipped: 0,
            }
        )
        .await
        .unwrap());

    // Restart forgets everything.
    assert_eq!(
        state
            .begin_run(&spec(&run, "v2"), Restart::Forget)
            .await
            .unwrap(),
        RunStart::Created
    );
    assert!(!state.step_record(&run, "s").await.unwrap().initialized);
}

/// Tables lost half-way (a process killed while creating them) are created on the next open.
#[tokio::test]
async fn missing_state_tables_are_created_again() {
    let db = db("sqlite").await;
    drop(store(&db).await);
    connect(&db)
        .await
        .execute_unprepared("DROP TABLE godwit_batches")
        .await
        .unwrap();
    let state = store(&db).await;
    let (run, record) = started_step(&state, "5").await;
    assert!(state
        .claim_new(&run, "s", &record, range(1, 5, true), "w", LEASE)
        .await
        .unwrap()
        .is_some());
}

/// A run name the state tables cannot hold is an error, not an endless retry.
async fn refuses_a_name_too_long(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let name = format!("{}-{}", run_name(), "x".repeat(300));
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        state.begin_run(&spec(&name, "v1"), Restart::Resume),
    )
    .await
    .expect("begin_run must not loop");
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test]
async fn pg_refuses_a_name_too_long() {
    refuses_a_name_too_long("pg").await;
}

#[tokio::test]
async fn mysql_refuses_a_name_too_long() {
    refuses_a_name_too_long("mysql").await;
}

/// Several ranges claimed at once are numbered in order, each with a token of its own; the
/// cursor moves past the last; a stale record claims nothing; the last range may end the walk.
async fn several_batches_in_one_claim(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let (run, record) = started_step(&state, "50").await;
    let claimed = state
        .claim_new_batches(
            &run,
            "s",
            &record,
            vec![
                range(1, 10, false),
                range(11, 20, false),
                range(21, 30, false),
            ],
            "w",
            LEASE,
        )
        .await
        .unwrap()
        .expect("the cursor was where the record says");
    let numbers: Vec<i64> = claimed.iter().map(|b| b.number()).collect();
    assert_eq!(numbers, [0, 1, 2]);
    let ends: Vec<Option<&str>> = claimed.iter().map(|b| b.end_key()).collect();
    assert_eq!(ends, [Some("10"), Some("20"), Some("30")]);
    let after = state.step_record(&run, "s").await.unwrap();
    assert_eq!(after.next_batch, 3);
    assert_eq!(after.cursor_key.as_deref(), Some("30"));
    assert!(!after.exhausted);
    let stale = state
        .claim_new_batches(&run, "s", &record, vec![range(1, 10, false)], "w2", LEASE)
        .await
        .unwrap();
    assert!(stale.is_none(), "a stale cursor claims nothing");
    // Each claim is fenced on its own: finishing one leaves the others claimed.
    let outcome = BatchOutcome {
        rows_affected: 10,
        duration: Duration::from_millis(1),
        rows_skipped: 0,
    };
    assert!(state.record_done_here(&claimed[1], outcome).await.unwrap());
    assert_eq!(queue(&db, &run).await, Some((1, 2)));
    let tail = state
        .claim_new_batches(
            &run,
            "s",
            &after,
            vec![range(31, 40, false), range(41, 50, true)],
            "w",
            LEASE,
        )
        .await
        .unwrap()
        .expect("claim the rest");
    assert_eq!(tail.len(), 2);
    assert!(state.step_record(&run, "s").await.unwrap().exhausted);
}

/// A claim that walks in its own statement (PostgreSQL, state beside the walked table) waits
/// for a cursor row another transaction holds, then claims the ranges after where that one
/// left the cursor, instead of failing; it marks the walk's end, and claims nothing for a run
/// of another generation.
#[tokio::test]
async fn pg_a_walked_claim_waits_for_the_cursor_row() {
    let db = db("pg").await;
    let state = store(&db).await;
    let (run, _) = started_step(&state, "100").await;
    let table = format!("walked_{}", &run.replace('-', "_"));
    let mut walker = connect(&db).await;
    walker
        .execute_unprepared(&format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY); \
             INSERT INTO {table} SELECT generate_series(1, 100)"
        ))
        .await
        .unwrap();
    let ranges = |claimed: &WalkedClaim| match claimed {
        WalkedClaim::Claimed { batches, exhausted } => (
            batches
                .iter()
                .map(|b| {
                    (
                        b.number(),
                        b.start_key().unwrap().to_string(),
                        b.end_key().unwrap().to_string(),
                    )
                })
                .collect::<Vec<_>>(),
            *exhausted,
        ),
        other => panic!("claimed nothing: {other:?}"),
    };
    let first = walked(&state, walker.as_mut(), &run, &table, 2).await;
    assert_eq!(
        ranges(&first),
        (
            vec![(0, "1".into(), "10".into()), (1, "11".into(), "20".into())],
            false
        )
    );

    // Another transaction holds the cursor row and moves it past three more batches.
    let mut holder = connect(&db).await;
    holder.begin(Default::default()).await.unwrap();
    holder
        .execute(
            "UPDATE godwit_steps SET next_batch = 5, cursor_key = '50' WHERE run = $1 AND step = 's'",
            &[godwit_driver::Value::Text(run.clone())],
        )
        .await
        .unwrap();
    let mut watcher = connect(&db).await;
    let (second, ()) = tokio::join!(walked(&state, walker.as_mut(), &run, &table, 2), async {
        // The claim is seen waiting for the row lock (not failing) before the holder commits.
        let waiting = "SELECT count(*) FROM pg_stat_activity \
                       WHERE wait_event_type = 'Lock' AND query LIKE 'WITH cur AS%'";
        let started = std::time::Instant::now();
        loop {
            let rows = watcher.query(waiting, &[]).await.unwrap();
            if rows[0].get(0).as_i64() == Some(1) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the claim never waited for the row"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        holder.commit().await.unwrap();
    });
    assert_eq!(
        ranges(&second),
        (
            vec![(5, "51".into(), "60".into()), (6, "61".into(), "70".into())],
            false
        ),
        "the claim walks from where the holder left the cursor"
    );

    // The rest, then nothing: the step is marked walked to its end.
    let rest = walked(&state, walker.as_mut(), &run, &table, 4).await;
    let (rest, exhausted) = ranges(&rest);
    assert_eq!(rest.last(), Some(&(9, "91".into(), "100".into())));
    assert!(exhausted);
    assert!(state.step_record(&run, "s").await.unwrap().exhausted);
    let after = walked(&state, walker.as_mut(), &run, &table, 4).await;
    assert!(matches!(after, WalkedClaim::NotHere), "{after:?}");

    // A run restarted by another process: the cursor row is not this generation's to take.
    let (run2, _) = started_step(&state, "100").await;
    let other = store(&db).await;
    other
        .begin_run(&spec(&run2, "v1"), Restart::Forget)
        .await
        .unwrap();
    other
        .init_step(&run2, "s", Some("int"), Some("100"), false)
        .await
        .unwrap();
    let fenced = walked(&state, walker.as_mut(), &run2, &table, 2).await;
    assert!(matches!(fenced, WalkedClaim::NotHere), "{fenced:?}");
    walker
        .execute_unprepared(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

/// A walked claim of up to `batches` ranges of 10 keys of `table`, up to the key 100.
async fn walked(
    state: &StateStore,
    conn: &mut dyn godwit_driver::Conn,
    run: &str,
    table: &str,
    batches: usize,
) -> WalkedClaim {
    let keys = |from: &str, upper: &str, limit: &str| {
        Some(format!(
            "SELECT id AS godwit_key FROM {table} WHERE id >= {from} AND id <= {upper} \
             ORDER BY id LIMIT {limit}"
        ))
    };
    state
        .claim_walked(conn, run, "s", keys, 100, 10, batches, "w", LEASE)
        .await
        .unwrap()
}

/// A server crash can lose the last (asynchronous) claims and rewind a step's cursor while a
/// worker still holds the old one: that worker then neither completes the step nor claims from
/// its stale cursor.
async fn a_rewound_cursor_is_noticed(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let (run, record) = started_step(&state, "20").await;
    let claimed = state
        .claim_new_batches(
            &run,
            "s",
            &record,
            vec![range(1, 10, false), range(11, 20, true)],
            "w",
            LEASE,
        )
        .await
        .unwrap()
        .expect("claim");
    let stale = state.step_record(&run, "s").await.unwrap();
    assert!(stale.exhausted);
    // What a crash before the claim reached the disk leaves behind.
    let mut conn = connect(&db).await;
    let p = |n: usize| godwit_driver::Dialect::param(conn.dialect(), n);
    let (p1, p2) = (p(1), p(2));
    for q in [
        format!("DELETE FROM godwit_batches WHERE run = {p1} AND step = {p2}"),
        format!(
            "UPDATE godwit_steps SET next_batch = 0, cursor_key = NULL, exhausted = 0 \
             WHERE run = {p1} AND step = {p2}"
        ),
    ] {
        conn.execute(
            &q,
            &[
                godwit_driver::Value::Text(run.clone()),
                godwit_driver::Value::Text("s".into()),
            ],
        )
        .await
        .unwrap();
    }
    let outcome = BatchOutcome {
        rows_affected: 10,
        duration: Duration::from_millis(1),
        rows_skipped: 0,
    };
    assert!(!state.record_done_here(&claimed[0], outcome).await.unwrap());
    assert_eq!(
        state.complete_step(&run, "s").await.unwrap(),
        StepCompletion::Waiting,
        "a step whose walk did not end is not done"
    );
    // A cursor at the same batch number but another key does not match either.
    let other = state
        .init_step(&run, "s", Some("int"), Some("20"), false)
        .await
        .unwrap();
    assert_eq!(other.next_batch, 0);
    let moved = state
        .claim_new(&run, "s", &other, range(1, 5, false), "w2", LEASE)
        .await
        .unwrap();
    assert!(moved.is_some());
    let mut lagging = other.clone();
    lagging.cursor_key = Some("3".into());
    lagging.next_batch = 1;
    assert!(state
        .claim_new(&run, "s", &lagging, range(4, 8, false), "w", LEASE)
        .await
        .unwrap()
        .is_none());
}

/// The run's row in `godwit_queue`, the view autoscalers read: (pending, running) batches,
/// or `None` when the run asks for no worker.
async fn queue(db: &Db, run: &str) -> Option<(i64, i64)> {
    let mut conn = connect(db).await;
    let q = if conn.dialect() == godwit_driver::Dialect::Postgres {
        "SELECT pending_batches, running_batches FROM godwit_queue WHERE run = $1"
    } else {
        "SELECT pending_batches, running_batches FROM godwit_queue WHERE run = ?"
    };
    let rows = conn
        .query(q, &[godwit_driver::Value::Text(run.to_string())])
        .await
        .expect("query godwit_queue");
    assert!(rows.len() <= 1, "one step, one row: {rows:?}");
    rows.first().map(|r| {
        (
            r.get(0).as_i64().expect("pending_batches is an integer"),
            r.get(1).as_i64().expect("running_batches is an integer"),
        )
    })
}

/// `godwit_queue` counts what a fleet has left: batches released or waiting for a retry, plus
/// the unclaimed rest of the key range in batches, and the batches being worked on; nothing for
/// paused, cancelled or done runs; one batch for a step not started yet.
async fn queue_view_counts_what_is_left(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let submitted = run_name() + "-sub";
    assert_eq!(
        state.submit(&spec(&submitted, "v1")).await.unwrap(),
        RunStart::Created
    );
    assert_eq!(queue(&db, &submitted).await, Some((1, 0)), "not started");
    assert_eq!(
        state.run_state(&submitted).await.unwrap(),
        Some(RunState::Pending)
    );

    let run = run_name();
    state
        .begin_run(&spec(&run, "v1"), Restart::Resume)
        .await
        .unwrap();
    assert_eq!(queue(&db, &run).await, Some((1, 0)), "walk not started");
    let mut record = state
        .init_step(&run, "s", Some("int"), Some("100"), false)
        .await
        .unwrap();
    assert_eq!(queue(&db, &run).await, Some((1, 0)), "rows not counted yet");
    state.set_rows_total(&run, "s", 100).await.unwrap();
    // Batches of 10 (the spec's batch size) over 100 rows.
    assert_eq!(queue(&db, &run).await, Some((10, 0)));
    let mut claimed = Vec::new();
    for (a, b) in [(1, 10), (11, 20), (21, 30)] {
        let batch = state
            .claim_new(&run, "s", &record, range(a, b, false), "w", LEASE)
            .await
            .unwrap()
            .expect("claim");
        record = state.step_record(&run, "s").await.unwrap();
        claimed.push(batch);
    }
    assert_eq!(
        queue(&db, &run).await,
        Some((7, 3)),
        "3 running, 70 rows left"
    );
    let outcome = BatchOutcome {
        rows_affected: 10,
        duration: Duration::from_millis(5),
        rows_skipped: 0,
    };
    assert!(state.record_done_here(&claimed[0], outcome).await.unwrap());
    state.release(&claimed[1]).await.unwrap();
    let transient = Error::new(
        godwit_driver::ErrorKind::Transient,
        Some("40P01".into()),
        "deadlock detected",
    );
    state
        .record_failure(&claimed[2], &transient, Some(Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(
        queue(&db, &run).await,
        Some((9, 0)),
        "one done, one released and one waiting to retry: 7 + 2 left"
    );

    state.control(&run, Control::Pause).await.unwrap();
    assert_eq!(queue(&db, &run).await, None, "paused runs need no worker");
    state.control(&run, Control::Resume).await.unwrap();
    assert_eq!(queue(&db, &run).await, Some((9, 0)));
    state.control(&run, Control::Cancel).await.unwrap();
    assert_eq!(
        queue(&db, &run).await,
        None,
        "cancelled runs need no worker"
    );
    state.control(&submitted, Control::Cancel).await.unwrap();
    assert_eq!(queue(&db, &submitted).await, None);
}

/// State tables of version 1 gain what versions 2 to 4 added when a newer godwit opens them.
#[tokio::test]
async fn version_1_tables_are_migrated() {
    let db = db("sqlite").await;
    drop(store(&db).await);
    let mut conn = connect(&db).await;
    for statement in [
        "DROP VIEW godwit_queue",
        "ALTER TABLE godwit_steps DROP COLUMN batch_size",
        "DROP TABLE godwit_dead_letters",
        "ALTER TABLE godwit_batches DROP COLUMN rows_skipped",
        "ALTER TABLE godwit_runs DROP COLUMN generation",
        "UPDATE godwit_meta SET value = '1' WHERE name = 'schema_version'",
    ] {
        conn.execute_unprepared(statement).await.unwrap();
    }
    let state = store(&db).await;
    let run = run_name();
    state
        .begin_run(&spec(&run, "v1"), Restart::Resume)
        .await
        .unwrap();
    assert_eq!(queue(&db, &run).await, Some((1, 0)));
    let version = conn
        .query(
            "SELECT value FROM godwit_meta WHERE name = 'schema_version'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        version[0].get(0).as_i64(),
        Some(godwit_state::SCHEMA_VERSION)
    );
}

/// Issue 11: a store that began a run claims and records nothing once another process
/// restarted the run (`--restart`), whatever it read before, and says so: a new claim, a
/// released batch of the new generation, the done, failure and release records of its old
/// claims, fixing a step, marking it exhausted, failed, or the run done.
async fn r11_a_restarted_run_fences_the_old_generation(backend: &str) {
    let db = db(backend).await;
    let old = store(&db).await;
    let (run, record) = started_step(&old, "100").await;
    let held = old
        .claim_new(&run, "s", &record, range(1, 10, false), "old", LEASE)
        .await
        .unwrap()
        .expect("old claim");
    let failing = old
        .claim_new(
            &run,
            "s",
            &old.step_record(&run, "s").await.unwrap(),
            range(11, 20, false),
            "old",
            LEASE,
        )
        .await
        .unwrap()
        .expect("old claim");

    let new = store(&db).await;
    new.begin_run(&spec(&run, "v2"), Restart::Forget)
        .await
        .unwrap();
    let is_restarted = |e: &Error| godwit_state::is_restarted(e);

    // The old process reads the new generation's step; it may not fix or claim it.
    let fixed = old
        .init_step(&run, "s", Some("int"), Some("999"), false)
        .await
        .unwrap_err();
    assert!(is_restarted(&fixed), "{fixed}");
    assert!(fixed
        .to_string()
        .contains("was restarted by another process"));
    let fresh = new
        .init_step(&run, "s", Some("int"), Some("100"), false)
        .await
        .unwrap();
    assert_eq!(fresh.upper_key.as_deref(), Some("100"));
    let claim = old
        .claim_new(&run, "s", &fresh, range(1, 10, false), "old", LEASE)
        .await
        .unwrap_err();
    assert!(is_restarted(&claim), "{claim}");
    // A batch of the new generation given back is not the old process's to take.
    let ours = new
        .claim_new(&run, "s", &fresh, range(1, 10, false), "new", LEASE)
        .await
        .unwrap()
        .expect("new claim");
    new.release(&ours).await.unwrap();
    let abandoned = old.claim_abandoned(&run, "s", "old", Duration::ZERO).await;
    assert!(abandoned.as_ref().is_err_and(is_restarted), "{abandoned:?}");
    let mark = old
        .mark_exhausted(&run, "s", &new.step_record(&run, "s").await.unwrap())
        .await
        .unwrap_err();
    assert!(is_restarted(&mark), "{mark}");
    assert!(!new.step_record(&run, "s").await.unwrap().exhausted);

    // The old claims' records change nothing, in the batch's transaction or not.
    let outcome = BatchOutcome::default();
    let mut conn = connect(&db).await;
    conn.begin(Default::default()).await.unwrap();
    assert!(!StateStore::record_done(conn.as_mut(), &held, outcome)
        .await
        .unwrap());
    conn.rollback().await.unwrap();
    assert!(!old.record_done_here(&held, outcome).await.unwrap());
    old.record_failure(&failing, &Error::permanent("late"), None)
        .await
        .unwrap();
    old.release(&held).await.unwrap();
    old.fail_step(&run, "s", "late failure").await.unwrap();
    let done = old
        .set_run_state(&run, RunState::Done, None)
        .await
        .unwrap_err();
    assert!(is_restarted(&done), "{done}");
    let read = old.run_state(&run).await.unwrap_err();
    assert!(is_restarted(&read), "{read}");

    // The new generation is as the new process left it.
    assert_eq!(new.run_state(&run).await.unwrap(), Some(RunState::Running));
    assert_eq!(new.step_record(&run, "s").await.unwrap().state, "running");
    let again = new
        .claim_abandoned(&run, "s", "new", LEASE)
        .await
        .unwrap()
        .expect("the released batch");
    assert!(new.record_done_here(&again, outcome).await.unwrap());
    let status = new.status(&run).await.unwrap().expect("status");
    assert_eq!(status.steps[0].batches_failed, 0);
}

per_backend!(
    claims_are_compare_and_set_and_fenced,
    retries_release_and_completion,
    queue_view_counts_what_is_left,
    several_batches_in_one_claim,
    a_rewound_cursor_is_noticed,
    r11_a_restarted_run_fences_the_old_generation
);
