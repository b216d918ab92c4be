//! Yielding to the application, through the real binary against real servers: a batch that
//! meets a row lock an application holds gives up soon and rolls back, so the rows it had
//! taken are free for the application again, and it is tried again later without counting an
//! attempt, however long the application holds its lock.

mod common;

use std::time::{Duration, Instant};

use common::{assert_finishes_each_row_once, path_str, spawn_watched, Backend, KillOnDrop, TestDb};

/// An application transaction holds row 150 for longer than five of godwit's attempts would
/// last. Meanwhile a second application session updates row 120, in the same batch as 150 and
/// before it in key order, and is not kept waiting: the batch does not sit on the rows it
/// took while it waits for 150. Once the application commits, the run finishes: every row once.
async fn a_batch_yields_to_a_lock_the_application_holds(backend: Backend) {
    let db = TestDb::new(backend).await;
    let t = db.table("yield");
    db.counter_table(&t, 1..=300).await;
    let plan = db.step_plan(
        &t,
        "batch_size = 100\nadaptive = false\nmax_attempts = 2",
        &format!(
            "name = \"s\"\ntable = \"{t}\"\nkey = \"id\"\n\
             sql = \"UPDATE {t} SET hits = hits + 1 WHERE id BETWEEN :start AND :end\""
        ),
    );
    let mut holder = db.conn().await;
    holder.begin(Default::default()).await.expect("begin");
    holder
        .execute_unprepared(&format!("UPDATE {t} SET grp = grp + 10 WHERE id = 150"))
        .await
        .expect("lock row 150");
    let mut run = KillOnDrop(spawn_watched(&[
        "run",
        path_str(&plan),
        "--json",
        "--concurrency",
        "1",
    ]));
    // More yields than `max_attempts` allows failures: none of them counts.
    for n in 1..=4 {
        run.wait_stdout(
            &format!("yield {n} of the batch holding row 150"),
            Duration::from_secs(30),
            |line| line.contains("batch_retry") && line.contains("yielded to a lock"),
        );
    }
    let started = Instant::now();
    let mut other = db.conn().await;
    tokio::time::timeout(
        Duration::from_secs(10),
        other.execute_unprepared(&format!("UPDATE {t} SET grp = grp + 10 WHERE id = 120")),
    )
    .await
    .expect("the application's update of row 120 waited on godwit for 10 s")
    .expect("the application's update of row 120");
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(3),
        "the application waited {waited:?} for a row of a batch that was itself waiting"
    );
    assert!(run.alive(), "the run ended: {}", run.output_so_far());
    holder.commit().await.expect("the application commits");
    assert_finishes_each_row_once(&mut run, &db, &t, Duration::from_secs(60)).await;
    assert_eq!(
        db.scalar(&format!(
            "SELECT count(*) FROM {t} WHERE grp >= 10 AND id IN (120, 150)"
        ))
        .await,
        2,
        "both application writes kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_yields_to_a_lock_the_application_holds_pg() {
    a_batch_yields_to_a_lock_the_application_holds(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_yields_to_a_lock_the_application_holds_mariadb() {
    a_batch_yields_to_a_lock_the_application_holds(Backend::MySql).await;
}
