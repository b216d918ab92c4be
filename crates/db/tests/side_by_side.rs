//! Two batches of one table side by side on MariaDB, each with the short lock timeout batches
//! take (which MariaDB makes "do not wait"): the second must not meet the first's locks. Under
//! REPEATABLE READ a range UPDATE also locks the first row past its range, so the batch next
//! to it failed at once with 1205 and was retried; batches run at READ COMMITTED.

use std::time::Duration;

use godwit_driver::{ConnectOptions, DbUrl, TxOptions};

#[tokio::test]
async fn a_batch_does_not_meet_the_locks_of_the_batch_before_it() {
    let url = DbUrl::new(std::env::var("GODWIT_TEST_MYSQL").expect(
        "GODWIT_TEST_MYSQL is not set: run the tests with scripts/test.sh, which starts MariaDB",
    ));
    let options = ConnectOptions::default();
    let mut a = godwit_db::connect(&url, &options).await.expect("connect");
    let mut b = godwit_db::connect(&url, &options).await.expect("connect");
    let table = format!("side_by_side_{:08x}", rand_suffix());
    a.execute_unprepared(&format!(
        "CREATE TABLE {table} (id BIGINT PRIMARY KEY, hits INT NOT NULL DEFAULT 0)"
    ))
    .await
    .expect("create");
    let values: Vec<String> = (1..=30).map(|i| format!("({i})")).collect();
    a.execute_unprepared(&format!(
        "INSERT INTO {table} (id) VALUES {}",
        values.join(",")
    ))
    .await
    .expect("insert");
    let batch = TxOptions {
        lock_timeout: Some(Duration::from_millis(100)),
        ..TxOptions::default()
    };
    let update = |from: i64, to: i64| {
        format!("UPDATE {table} SET hits = hits + 1 WHERE id BETWEEN {from} AND {to}")
    };
    a.begin(batch).await.expect("begin a");
    assert_eq!(a.execute(&update(1, 10), &[]).await.expect("batch a"), 10);
    b.begin(batch).await.expect("begin b");
    let next = b.execute(&update(11, 20), &[]).await;
    let _ = b.rollback().await;
    let _ = a.rollback().await;
    a.execute_unprepared(&format!("DROP TABLE {table}"))
        .await
        .expect("drop");
    assert_eq!(
        next.expect("the batch next to a running one met its locks"),
        10
    );
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ std::process::id())
        .unwrap_or_default()
}
