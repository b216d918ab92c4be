//! Rows a transform could not handle ("dead letters") and skipped-row counts, on each real
//! database: letters commit and roll back with their batch, a key keeps one letter, long and
//! Unicode keys, many letters, digest clashes, listing, forgetting, and tables of version 2.

mod common;

use std::time::Duration;

use common::{
    connect, db, isolated, range, run_name, spec, spec_of, started_step, store, ClaimOne, Db, LEASE,
};
use godwit_driver::{Dialect, Value};
use godwit_state::{
    BatchOutcome, ClaimedBatch, DeadLetter, DeadLetterRow, Restart, StateStore, SCHEMA_VERSION,
};

fn outcome(rows_skipped: u64) -> BatchOutcome {
    BatchOutcome {
        rows_affected: 1,
        duration: Duration::from_millis(1),
        rows_skipped,
    }
}

fn letter(key: &str, error: &str) -> DeadLetter {
    DeadLetter {
        key: key.into(),
        error: error.into(),
        row: serde_json::json!({ "id": key, "note": "ünïcødé ✓" }).to_string(),
    }
}

/// (key, error) of each letter, in the listing's order.
fn keys_and_errors(rows: &[DeadLetterRow]) -> Vec<(String, String)> {
    rows.iter()
        .map(|r| (r.key.clone(), r.error.clone()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, e)| (k.to_string(), e.to_string()))
        .collect()
}

/// Runs `sql` with `?` placeholders (numbered for PostgreSQL) on a connection of its own.
async fn exec(db: &Db, sql: &str, params: &[Value]) -> u64 {
    let mut conn = connect(db).await;
    let mut n = 0;
    let sql: String = sql
        .chars()
        .map(|c| match (c, conn.dialect()) {
            ('?', Dialect::Postgres) => {
                n += 1;
                format!("${n}")
            }
            _ => c.to_string(),
        })
        .collect();
    conn.execute(&sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Claims the next range of step `step` (keys `a..=b`).
async fn claim(state: &StateStore, run: &str, step: &str, a: i64, b: i64) -> ClaimedBatch {
    let record = state.step_record(run, step).await.unwrap();
    state
        .claim_new(run, step, &record, range(a, b, false), "w", LEASE)
        .await
        .unwrap()
        .expect("claim")
}

/// Exactly-once: letters written in the batch's transaction go with it, whether it commits,
/// rolls back, or is fenced because another worker took the batch over.
async fn letters_commit_or_roll_back_with_the_batch(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let (run, record) = started_step(&state, "100").await;
    let batch = state
        .claim_new(&run, "s", &record, range(1, 10, false), "w", LEASE)
        .await
        .unwrap()
        .expect("claim");

    let mut conn = connect(&db).await;
    conn.begin(Default::default()).await.unwrap();
    StateStore::record_dead_letters(conn.as_mut(), &batch, &[letter("3", "rolled back")])
        .await
        .unwrap();
    conn.rollback().await.unwrap();
    assert!(
        state
            .dead_letters(&run, None, None)
            .await
            .unwrap()
            .is_empty(),
        "a rolled-back batch leaves no letter"
    );

    conn.begin(Default::default()).await.unwrap();
    StateStore::record_dead_letters(
        conn.as_mut(),
        &batch,
        &[letter("7", "bad date"), letter("3", "no such customer")],
    )
    .await
    .unwrap();
    assert!(StateStore::record_done(conn.as_mut(), &batch, outcome(2))
        .await
        .unwrap());
    conn.commit().await.unwrap();
    let letters = state.dead_letters(&run, None, None).await.unwrap();
    assert_eq!(
        keys_and_errors(&letters),
        pairs(&[("7", "bad date"), ("3", "no such customer")]),
        "in the order the batch gave them"
    );
    let first = &letters[0];
    assert_eq!((first.step.as_str(), first.batch), ("s", batch.number()));
    assert_eq!(first.row, letter("7", "").row);
    assert!(first.created_ms > 1_600_000_000_000, "{}", first.created_ms);
    let status = state.status(&run).await.unwrap().expect("status");
    assert_eq!(status.steps[0].rows_skipped, 2);

    // A worker whose batch was taken over writes letters, then finds out at the done record
    // and rolls back: none of its letters stay.
    let record = state.step_record(&run, "s").await.unwrap();
    let lost = state
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
        .expect("claim");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let taken = state
        .claim_abandoned(&run, "s", "w2", LEASE)
        .await
        .unwrap()
        .expect("taken over");
    conn.begin(Default::default()).await.unwrap();
    StateStore::record_dead_letters(conn.as_mut(), &lost, &[letter("15", "stale worker")])
        .await
        .unwrap();
    assert!(!StateStore::record_done(conn.as_mut(), &lost, outcome(1))
        .await
        .unwrap());
    conn.rollback().await.unwrap();
    assert!(state.record_done_here(&taken, outcome(0)).await.unwrap());
    assert_eq!(state.dead_letters(&run, None, None).await.unwrap().len(), 2);
    assert_eq!(
        state.status(&run).await.unwrap().unwrap().steps[0].rows_skipped,
        2
    );

    // What `godwit status` opens reads them too.
    let reader = StateStore::open_reader(&db.url, connect(&db).await)
        .await
        .unwrap();
    assert_eq!(
        reader.dead_letters(&run, None, None).await.unwrap(),
        letters
    );
    assert_eq!(
        reader.status(&run).await.unwrap().unwrap().steps[0].rows_skipped,
        2
    );
}

/// A key has one letter per run and step: recording it again (a batch run again, a retry,
/// another batch) replaces it, and within one call the last letter for a key wins.
async fn a_key_recorded_again_is_replaced(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let (run, _) = started_step(&state, "100").await;
    let b0 = claim(&state, &run, "s", 1, 10).await;
    let b1 = claim(&state, &run, "s", 11, 20).await;

    state
        .record_dead_letters_here(&b0, &[letter("5", "first"), letter("6", "x")])
        .await
        .unwrap();
    // The same batch again, as after a crash between its commit and its record.
    state
        .record_dead_letters_here(&b0, &[letter("5", "second")])
        .await
        .unwrap();
    state
        .record_dead_letters_here(&b0, &[letter("8", "a"), letter("8", "b")])
        .await
        .unwrap();
    let mut conn = connect(&db).await;
    conn.begin(Default::default()).await.unwrap();
    StateStore::record_dead_letters(conn.as_mut(), &b0, &[letter("6", "y")])
        .await
        .unwrap();
    conn.commit().await.unwrap();
    let mut got = keys_and_errors(&state.dead_letters(&run, None, None).await.unwrap());
    got.sort();
    assert_eq!(got, pairs(&[("5", "second"), ("6", "y"), ("8", "b")]));

    // Another batch recording the key takes the letter over.
    state
        .record_dead_letters_here(&b1, &[letter("5", "third")])
        .await
        .unwrap();
    let letters = state.dead_letters(&run, None, None).await.unwrap();
    assert_eq!(letters.len(), 3);
    let five = letters.iter().find(|l| l.key == "5").expect("key 5");
    assert_eq!((five.error.as_str(), five.batch), ("third", b1.number()));
    assert_eq!(
        letters.last().map(|l| l.key.as_str()),
        Some("5"),
        "listed with its new batch"
    );
    // Nothing to record costs nothing and changes nothing.
    state.record_dead_letters_here(&b1, &[]).await.unwrap();
    assert_eq!(state.dead_letters(&run, None, None).await.unwrap(), letters);
}

/// Keys far longer than an index entry may be, keys sharing a long prefix, keys that differ
/// only in trailing spaces (equal under MySQL's PAD SPACE collations), multi-byte text and the
/// empty key: each keeps a letter of its own, exactly as given, and is replaced in place.
async fn long_and_unicode_keys(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let (run, _) = started_step(&state, "100").await;
    let batch = claim(&state, &run, "s", 1, 10).await;
    let long = "x".repeat(5000);
    let unicode = "ключ-🔑-日本語-".repeat(300);
    let keys = [
        long.clone(),
        format!("{long}y"),
        format!("{long}z"),
        unicode.clone(),
        format!("{unicode}ж"),
        "é".to_string(),
        "e\u{301}".to_string(),
        "trailing".to_string(),
        "trailing ".to_string(),
        String::new(),
    ];
    assert!(keys[0].chars().count() > 1000 && unicode.chars().count() > 1000);
    let letters: Vec<DeadLetter> = keys
        .iter()
        .map(|k| DeadLetter {
            key: k.clone(),
            error: format!("refusé: {}", k.chars().count()),
            row: serde_json::json!({ "id": k }).to_string(),
        })
        .collect();
    let mut conn = connect(&db).await;
    conn.begin(Default::default()).await.unwrap();
    StateStore::record_dead_letters(conn.as_mut(), &batch, &letters)
        .await
        .unwrap();
    conn.commit().await.unwrap();
    let stored = state.dead_letters(&run, Some("s"), None).await.unwrap();
    let got: Vec<&str> = stored.iter().map(|l| l.key.as_str()).collect();
    let want: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(got, want, "every key kept, exactly, in order");
    for (l, given) in stored.iter().zip(&letters) {
        assert_eq!((&l.error, &l.row), (&given.error, &given.row));
    }

    // Recorded again: still one letter per key, the new one.
    let again: Vec<DeadLetter> = letters
        .iter()
        .map(|l| DeadLetter {
            error: format!("again {}", l.error),
            ..l.clone()
        })
        .collect();
    state
        .record_dead_letters_here(&batch, &again)
        .await
        .unwrap();
    let stored = state.dead_letters(&run, Some("s"), None).await.unwrap();
    assert_eq!(stored.len(), keys.len());
    for (l, given) in stored.iter().zip(&again) {
        assert_eq!((&l.key, &l.error), (&given.key, &given.error));
    }
}

/// More letters than one statement may bind (SQLite's 32766 parameters, 65535 elsewhere), and
/// letters larger than one statement should carry, are all written; the listing's limit and
/// step filter.
async fn many_letters_are_written_in_chunks(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let run = run_name();
    state
        .begin_run(&spec_of(&run, "v1", &["a", "b"]), Restart::Resume)
        .await
        .unwrap();
    for step in ["a", "b"] {
        state
            .init_step(&run, step, Some("int"), Some("100000"), false)
            .await
            .unwrap();
    }
    let a0 = claim(&state, &run, "a", 1, 9000).await;
    let a1 = claim(&state, &run, "a", 9001, 9010).await;
    let b0 = claim(&state, &run, "b", 1, 10).await;

    let many: Vec<DeadLetter> = (0..9000)
        .map(|i| letter(&format!("{i:05}"), "refused"))
        .collect();
    let mut conn = connect(&db).await;
    conn.begin(Default::default()).await.unwrap();
    StateStore::record_dead_letters(conn.as_mut(), &a0, &many)
        .await
        .unwrap();
    conn.commit().await.unwrap();
    // Three letters of 400 KB: more than one statement's worth of text.
    let big: Vec<DeadLetter> = (0..3)
        .map(|i| DeadLetter {
            key: format!("big{i}"),
            error: "too big".into(),
            row: serde_json::json!({ "blob": "ü".repeat(200_000) }).to_string(),
        })
        .collect();
    state.record_dead_letters_here(&b0, &big).await.unwrap();
    // Recorded before a0's in time, listed after them: batch order.
    state
        .record_dead_letters_here(&a1, &[letter("09005", "later batch")])
        .await
        .unwrap();

    let a = state.dead_letters(&run, Some("a"), None).await.unwrap();
    assert_eq!(a.len(), 9001);
    assert!(a[..9000]
        .iter()
        .enumerate()
        .all(|(i, l)| l.key == format!("{i:05}") && l.batch == a0.number()));
    assert_eq!(
        (a[9000].key.as_str(), a[9000].batch),
        ("09005", a1.number())
    );
    let b = state.dead_letters(&run, Some("b"), None).await.unwrap();
    assert_eq!(b.len(), 3);
    assert!(b.iter().zip(&big).all(|(l, g)| l.row == g.row));
    let first = state.dead_letters(&run, None, Some(5)).await.unwrap();
    let keys: Vec<&str> = first.iter().map(|l| l.key.as_str()).collect();
    assert_eq!(keys, ["00000", "00001", "00002", "00003", "00004"]);
    let all = state
        .dead_letters(&run, None, Some(u64::MAX))
        .await
        .unwrap();
    assert_eq!(all.len(), 9004);
    assert_eq!(
        (all[9001].step.as_str(), all[9001].key.as_str()),
        ("b", "big0"),
        "step by step"
    );
    assert!(state
        .dead_letters(&run, Some("nope"), None)
        .await
        .unwrap()
        .is_empty());
}

/// Two keys with one digest must not share a letter: the stored key is compared, and a letter
/// that would replace another key's fails loudly. (No SHA-256 collision is known; the stored
/// key is changed by hand to play one.)
async fn a_digest_clash_is_refused(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let (run, _) = started_step(&state, "100").await;
    let batch = claim(&state, &run, "s", 1, 10).await;
    state
        .record_dead_letters_here(&batch, &[letter("a", "first"), letter("b", "kept")])
        .await
        .unwrap();
    exec(
        &db,
        "UPDATE godwit_dead_letters SET key_text = 'not-a' WHERE run = ? AND key_text = 'a'",
        &[Value::Text(run.clone())],
    )
    .await;
    let clash = state
        .record_dead_letters_here(&batch, &[letter("b", "replaced"), letter("a", "second")])
        .await
        .unwrap_err();
    assert!(clash.to_string().contains("SHA-256"), "{clash}");
    let mut conn = connect(&db).await;
    conn.begin(Default::default()).await.unwrap();
    let clash = StateStore::record_dead_letters(conn.as_mut(), &batch, &[letter("a", "third")])
        .await
        .unwrap_err();
    assert!(clash.to_string().contains("SHA-256"), "{clash}");
    conn.rollback().await.unwrap();
    let mut got = keys_and_errors(&state.dead_letters(&run, None, None).await.unwrap());
    got.sort();
    assert_eq!(
        got,
        pairs(&[("b", "kept"), ("not-a", "first")]),
        "the other key's letter is untouched, and the failed call wrote nothing"
    );
}

/// `rows_skipped` is summed over each step's done batches only.
async fn rows_skipped_are_summed_per_step(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let run = run_name();
    state
        .begin_run(&spec_of(&run, "v1", &["a", "b"]), Restart::Resume)
        .await
        .unwrap();
    for step in ["a", "b"] {
        state
            .init_step(&run, step, Some("int"), Some("100"), false)
            .await
            .unwrap();
    }
    let a0 = claim(&state, &run, "a", 1, 10).await;
    let a1 = claim(&state, &run, "a", 11, 20).await;
    let a2 = claim(&state, &run, "a", 21, 30).await;
    let b0 = claim(&state, &run, "b", 1, 10).await;
    let mut conn = connect(&db).await;
    conn.begin(Default::default()).await.unwrap();
    assert!(StateStore::record_done(conn.as_mut(), &a0, outcome(2))
        .await
        .unwrap());
    conn.commit().await.unwrap();
    assert!(state.record_done_here(&a1, outcome(5)).await.unwrap());
    assert!(state.record_done_here(&b0, outcome(1)).await.unwrap());
    // A batch given back and run again by someone else counts once, with its last record.
    state.release(&a2).await.unwrap();
    let again = state
        .claim_abandoned(&run, "a", "w2", LEASE)
        .await
        .unwrap()
        .expect("released");
    assert!(state.record_done_here(&again, outcome(4)).await.unwrap());
    assert!(!state.record_done_here(&a2, outcome(100)).await.unwrap());
    let status = state.status(&run).await.unwrap().unwrap();
    let skipped: Vec<(&str, i64)> = status
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.rows_skipped))
        .collect();
    assert_eq!(skipped, [("a", 11), ("b", 1)]);
    // Batches recorded by an older godwit have none (NULL).
    exec(
        &db,
        "UPDATE godwit_batches SET rows_skipped = NULL WHERE run = ? AND step = 'a' AND batch = ?",
        &[Value::Text(run.clone()), Value::Int(a1.number())],
    )
    .await;
    let status = state.status(&run).await.unwrap().unwrap();
    assert_eq!(status.steps[0].rows_skipped, 6);
}

/// `--restart` forgets a run's letters with its batches; other runs keep theirs.
async fn forgetting_a_run_forgets_its_letters(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let (run, _) = started_step(&state, "100").await;
    let (other, _) = started_step(&state, "100").await;
    for run in [&run, &other] {
        let batch = claim(&state, run, "s", 1, 10).await;
        state
            .record_dead_letters_here(&batch, &[letter("1", "bad")])
            .await
            .unwrap();
    }
    state
        .begin_run(&spec(&run, "v2"), Restart::Forget)
        .await
        .unwrap();
    assert!(state
        .dead_letters(&run, None, None)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        state.dead_letters(&other, None, None).await.unwrap().len(),
        1
    );
}

/// State tables of version 2 (no `rows_skipped`, no `godwit_dead_letters`): a reader reads
/// around them without creating anything, and opening them for work migrates them.
async fn version_2_tables_are_migrated(backend: &str) {
    let iso = isolated(backend).await;
    let db = &iso.db;
    let state = store(db).await;
    let (run, _) = started_step(&state, "100").await;
    let old = claim(&state, &run, "s", 1, 10).await;
    assert!(state.record_done_here(&old, outcome(0)).await.unwrap());
    let pending = claim(&state, &run, "s", 11, 20).await;
    drop(state);
    let mut conn = connect(db).await;
    for statement in [
        "DROP TABLE godwit_dead_letters",
        "DROP TABLE godwit_estimates",
        "ALTER TABLE godwit_batches DROP COLUMN rows_skipped",
        "ALTER TABLE godwit_runs DROP COLUMN probe_baseline",
        "ALTER TABLE godwit_runs DROP COLUMN throttle_notified_ms",
        "UPDATE godwit_meta SET value = '2' WHERE name = 'schema_version'",
    ] {
        conn.execute_unprepared(statement).await.unwrap();
    }

    let reader = StateStore::open_reader(&db.url, connect(db).await)
        .await
        .unwrap();
    let status = reader.status(&run).await.unwrap().expect("status");
    assert_eq!(
        (status.steps[0].batches_done, status.steps[0].rows_skipped),
        (1, 0)
    );
    assert!(reader
        .dead_letters(&run, None, None)
        .await
        .unwrap()
        .is_empty());
    assert!(
        conn.table_info("godwit_dead_letters")
            .await
            .unwrap()
            .is_none(),
        "a reader creates nothing"
    );

    let state = store(db).await;
    let version = conn
        .query(
            "SELECT value FROM godwit_meta WHERE name = 'schema_version'",
            &[],
        )
        .await
        .unwrap();
    // MySQL returns the VARCHAR as bytes.
    let version = match version[0].get(0) {
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => other.as_str().expect("text").to_string(),
    };
    assert_eq!(version, SCHEMA_VERSION.to_string());
    assert_eq!(SCHEMA_VERSION, 8);
    let batches = conn.table_info("godwit_batches").await.unwrap().unwrap();
    assert!(batches.column("rows_skipped").is_some());
    let runs = conn.table_info("godwit_runs").await.unwrap().unwrap();
    assert!(
        runs.column("probe_baseline").is_some(),
        "version 6: the latency guard's baseline"
    );
    assert!(
        runs.column("throttle_notified_ms").is_some(),
        "version 7: when the run's throttle was last announced"
    );
    assert!(
        conn.table_info("godwit_estimates").await.unwrap().is_some(),
        "version 8: the estimates"
    );
    // Migrating again (another process, a restart) changes nothing.
    drop(store(db).await);

    conn.begin(Default::default()).await.unwrap();
    StateStore::record_dead_letters(conn.as_mut(), &pending, &[letter("12", "bad")])
        .await
        .unwrap();
    assert!(StateStore::record_done(conn.as_mut(), &pending, outcome(3))
        .await
        .unwrap());
    conn.commit().await.unwrap();
    let status = state.status(&run).await.unwrap().unwrap();
    assert_eq!(
        (status.steps[0].batches_done, status.steps[0].rows_skipped),
        (2, 3),
        "the batch from version 2 counts no skipped row"
    );
    // The reader opened on version 2 notices the migration.
    assert_eq!(
        reader.dead_letters(&run, None, None).await.unwrap().len(),
        1
    );
    assert_eq!(
        reader.status(&run).await.unwrap().unwrap().steps[0].rows_skipped,
        3
    );
}

/// State tables of version 3 (no run generation): opening them for work gives each stored run
/// the generation `v3`, and the run resumes where it stopped: its next batch is claimed and
/// recorded done as before.
async fn version_3_runs_resume_after_migration(backend: &str) {
    let iso = isolated(backend).await;
    let db = &iso.db;
    let state = store(db).await;
    let (run, _) = started_step(&state, "100").await;
    let old = claim(&state, &run, "s", 1, 10).await;
    assert!(state.record_done_here(&old, outcome(0)).await.unwrap());
    drop(state);
    let mut conn = connect(db).await;
    for statement in [
        "ALTER TABLE godwit_runs DROP COLUMN generation",
        "UPDATE godwit_meta SET value = '3' WHERE name = 'schema_version'",
    ] {
        conn.execute_unprepared(statement).await.unwrap();
    }

    let state = store(db).await;
    // The run's name is the test's own (letters and digits): safe to write into the SQL.
    let generation = conn
        .query(
            &format!("SELECT generation FROM godwit_runs WHERE run = '{run}'"),
            &[],
        )
        .await
        .unwrap();
    let generation = match generation[0].get(0) {
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => other.as_str().expect("text").to_string(),
    };
    assert_eq!(generation, "v3");
    assert_eq!(
        state
            .begin_run(&spec(&run, "v1"), Restart::Resume)
            .await
            .unwrap(),
        godwit_state::RunStart::Resumed
    );
    let next = claim(&state, &run, "s", 11, 20).await;
    assert!(
        state.record_done_here(&next, outcome(0)).await.unwrap(),
        "a run stored before generations is fenced out of its own batches"
    );
    let status = state.status(&run).await.unwrap().unwrap();
    assert_eq!(status.steps[0].batches_done, 2);
}

per_backend!(
    letters_commit_or_roll_back_with_the_batch,
    a_key_recorded_again_is_replaced,
    long_and_unicode_keys,
    many_letters_are_written_in_chunks,
    a_digest_clash_is_refused,
    rows_skipped_are_summed_per_step,
    forgetting_a_run_forgets_its_letters,
    version_2_tables_are_migrated,
    version_3_runs_resume_after_migration
);
