//! A run's pace on each real database: the settings `godwit set` changes, read back with the
//! run's state; a step's current batch size and throttle reason as `status` shows them; and
//! tables of version 4 brought up to version 5.

mod common;

use common::{connect, db, isolated, spec_of, started_step, store, Db};
use godwit_driver::Value;
use godwit_state::{Control, Restart, RunControl, RunSettings, RunState, StateStore};

/// Settings written one by one keep the others, read back exactly (a float through each
/// driver) with the run's state, and show in the status; an unknown run has none.
async fn settings_are_stored_and_read_with_the_state(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let (run, _) = started_step(&state, "100").await;
    assert_eq!(
        state.run_control(&run).await.unwrap(),
        Some(RunControl {
            state: RunState::Running,
            settings: RunSettings::default(),
        })
    );
    let concurrency = RunSettings {
        concurrency: Some(3),
        ..RunSettings::default()
    };
    assert_eq!(
        state.set_run_settings(&run, concurrency).await.unwrap(),
        Some(concurrency)
    );
    let rate = RunSettings {
        batch_size: Some(500),
        max_rows_per_second: Some(1234.5678),
        ..RunSettings::default()
    };
    let both = RunSettings {
        concurrency: Some(3),
        batch_size: Some(500),
        max_rows_per_second: Some(1234.5678),
    };
    assert_eq!(
        state.set_run_settings(&run, rate).await.unwrap(),
        Some(both)
    );

    // Another process, as a worker reads it.
    let reader = store(&db).await;
    state.control(&run, Control::Pause).await.unwrap();
    assert_eq!(
        reader.run_control(&run).await.unwrap(),
        Some(RunControl {
            state: RunState::Paused,
            settings: both,
        })
    );
    assert_eq!(
        reader.run_state(&run).await.unwrap(),
        Some(RunState::Paused)
    );
    let status = reader.status(&run).await.unwrap().expect("status");
    assert_eq!(status.settings, both);
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(
        json["settings"],
        serde_json::json!({"concurrency": 3, "batch_size": 500, "max_rows_per_second": 1234.5678})
    );

    // A whole rate reads back as a float too; nothing asked changes nothing.
    let whole = RunSettings {
        max_rows_per_second: Some(100.0),
        ..RunSettings::default()
    };
    let after = state.set_run_settings(&run, whole).await.unwrap().unwrap();
    assert_eq!(after.max_rows_per_second, Some(100.0));
    assert_eq!(
        state
            .set_run_settings(&run, RunSettings::default())
            .await
            .unwrap(),
        Some(after)
    );

    let unknown = common::run_name();
    assert_eq!(state.set_run_settings(&unknown, rate).await.unwrap(), None);
    assert_eq!(state.run_control(&unknown).await.unwrap(), None);
}

/// A step's pace shows in the status while the step and its run are running: its current
/// batch size (the plan's until a worker changes it; none for a one-off step) and why it is
/// throttled, which a paused or finished run does not show.
async fn step_pace_shows_in_status(backend: &str) {
    let db = db(backend).await;
    let state = store(&db).await;
    let run = common::run_name();
    state
        .begin_run(&spec_of(&run, "v1", &["s", "once"]), Restart::Resume)
        .await
        .unwrap();
    let step = |status: &godwit_state::RunStatus, name: &str| {
        status
            .steps
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .expect("step")
    };
    let status = state.status(&run).await.unwrap().unwrap();
    assert_eq!(step(&status, "s").batch_size, Some(10), "as stored");
    assert_eq!(step(&status, "s").throttled, None);

    state
        .init_step(&run, "s", Some("int"), Some("100"), false)
        .await
        .unwrap();
    state
        .init_step(&run, "once", None, None, false)
        .await
        .unwrap();
    state
        .set_step_pace(&run, "s", 2500, Some("replica lag 12s > 10s"))
        .await
        .unwrap();
    let status = state.status(&run).await.unwrap().unwrap();
    let s = step(&status, "s");
    assert_eq!(s.batch_size, Some(2500));
    assert_eq!(s.throttled.as_deref(), Some("replica lag 12s > 10s"));
    assert_eq!(step(&status, "once").batch_size, None, "a one-off step");
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["steps"][0]["batch_size"], 2500, "{json}");
    assert_eq!(json["steps"][0]["throttled"], "replica lag 12s > 10s");
    assert!(json["steps"][1]["batch_size"].is_null(), "{json}");
    assert!(json["steps"][1]["throttled"].is_null(), "{json}");

    // Paused: no worker is throttled, whatever the column still holds.
    state.control(&run, Control::Pause).await.unwrap();
    let paused = state.status(&run).await.unwrap().unwrap();
    assert_eq!(step(&paused, "s").throttled, None);
    assert_eq!(step(&paused, "s").batch_size, Some(2500));
    state.control(&run, Control::Resume).await.unwrap();
    let resumed = state.status(&run).await.unwrap().unwrap();
    assert!(step(&resumed, "s").throttled.is_some());

    state.set_step_pace(&run, "s", 1800, None).await.unwrap();
    let clear = state.status(&run).await.unwrap().unwrap();
    assert_eq!(step(&clear, "s").batch_size, Some(1800));
    assert_eq!(step(&clear, "s").throttled, None);

    // A one-off step stored with no batch size shows none before it starts too.
    let unsized_run = common::run_name();
    let mut unsized_spec = spec_of(&unsized_run, "v1", &["once"]);
    unsized_spec.steps[0].batch_size = 0;
    state
        .begin_run(&unsized_spec, Restart::Resume)
        .await
        .unwrap();
    let pending = state.status(&unsized_run).await.unwrap().unwrap();
    assert_eq!(pending.steps[0].batch_size, None);

    // A failed step's reason is history too.
    state
        .set_step_pace(&run, "s", 1800, Some("throttle_query said so"))
        .await
        .unwrap();
    state.fail_step(&run, "s", "boom").await.unwrap();
    let failed = state.status(&run).await.unwrap().unwrap();
    assert_eq!(step(&failed, "s").throttled, None);
}

/// A process whose run was restarted by another reads nothing of the new generation and
/// changes no step's pace of it, as with every other record.
async fn a_restarted_run_fences_pace(backend: &str) {
    let db = db(backend).await;
    let old = store(&db).await;
    let (run, _) = started_step(&old, "100").await;
    let new = store(&db).await;
    new.begin_run(&spec_of(&run, "v2", &["s"]), Restart::Forget)
        .await
        .unwrap();
    let read = old.run_control(&run).await.unwrap_err();
    assert!(godwit_state::is_restarted(&read), "{read}");
    new.init_step(&run, "s", Some("int"), Some("100"), false)
        .await
        .unwrap();
    old.set_step_pace(&run, "s", 7, Some("old")).await.unwrap();
    let status = new.status(&run).await.unwrap().unwrap();
    assert_eq!(status.steps[0].batch_size, Some(10));
    assert_eq!(status.steps[0].throttled, None);
    assert!(new.run_control(&run).await.unwrap().is_some());
}

/// Tables of version 4 are read as they are (no settings, no throttle), and gain version 5's
/// columns when a writer opens them; their runs keep their progress.
async fn version_4_tables_are_migrated(backend: &str) {
    let isolated = isolated(backend).await;
    let db: &Db = &isolated.db;
    let state = store(db).await;
    let (run, _) = started_step(&state, "100").await;
    drop(state);
    let mut conn = connect(db).await;
    for statement in [
        "ALTER TABLE godwit_runs DROP COLUMN set_concurrency",
        "ALTER TABLE godwit_runs DROP COLUMN set_batch_size",
        "ALTER TABLE godwit_runs DROP COLUMN set_max_rows_per_second",
        "ALTER TABLE godwit_steps DROP COLUMN throttled",
        "UPDATE godwit_meta SET value = '4' WHERE name = 'schema_version'",
    ] {
        conn.execute_unprepared(statement).await.unwrap();
    }

    let reader = StateStore::open_reader(&db.url, connect(db).await)
        .await
        .unwrap();
    let status = reader.status(&run).await.unwrap().expect("status of v4");
    assert_eq!(status.settings, RunSettings::default());
    assert_eq!(status.steps[0].batch_size, Some(10));
    assert_eq!(status.steps[0].throttled, None);
    assert_eq!(
        reader.run_control(&run).await.unwrap().map(|c| c.state),
        Some(RunState::Running)
    );
    let columns = conn.table_info("godwit_runs").await.unwrap().unwrap();
    assert!(
        columns.column("set_concurrency").is_none(),
        "a reader migrated"
    );

    let state = store(db).await;
    let settings = RunSettings {
        concurrency: Some(2),
        batch_size: Some(40),
        max_rows_per_second: Some(0.5),
    };
    assert_eq!(
        state.set_run_settings(&run, settings).await.unwrap(),
        Some(settings)
    );
    state
        .set_step_pace(&run, "s", 40, Some("max_rows_per_second"))
        .await
        .unwrap();
    let status = state.status(&run).await.unwrap().unwrap();
    assert_eq!(status.settings, settings);
    assert_eq!(
        status.steps[0].throttled.as_deref(),
        Some("max_rows_per_second")
    );
    assert_eq!(
        state
            .step_record(&run, "s")
            .await
            .unwrap()
            .upper_key
            .as_deref(),
        Some("100")
    );
    let version = conn
        .query(
            "SELECT value FROM godwit_meta WHERE name = 'schema_version'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        text_of(version[0].get(0)),
        godwit_state::SCHEMA_VERSION.to_string()
    );
    // Opening again migrates nothing twice.
    drop(store(db).await);
}

/// A text column as text: MariaDB gives a binary-collated VARCHAR as bytes.
fn text_of(v: &Value) -> String {
    match v {
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        other => other
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{other:?}")),
    }
}

/// Of processes ending a run together, one changes its state (and so announces it); of
/// processes seeing it throttled, one per window may say so.
async fn one_process_announces(backend: &str) {
    let db = db(backend).await;
    let (a, b) = (store(&db).await, store(&db).await);
    let (run, _) = started_step(&a, "100").await;
    assert!(a.set_run_state(&run, RunState::Done, None).await.unwrap());
    assert!(!b.set_run_state(&run, RunState::Done, None).await.unwrap());
    let window = std::time::Duration::from_secs(3600);
    assert!(a.claim_throttle_notice(&run, window).await.unwrap());
    assert!(!b.claim_throttle_notice(&run, window).await.unwrap());
    assert!(!a.claim_throttle_notice(&run, window).await.unwrap());
    // Once the window has passed, the next one may.
    assert!(b
        .claim_throttle_notice(&run, std::time::Duration::ZERO)
        .await
        .unwrap());
    assert!(!a
        .claim_throttle_notice("no-such-run", window)
        .await
        .unwrap());
}

per_backend!(
    one_process_announces,
    settings_are_stored_and_read_with_the_state,
    step_pace_shows_in_status,
    a_restarted_run_fences_pace,
    version_4_tables_are_migrated,
);
