//! A real PostgreSQL streaming replica of the test server (`GODWIT_TEST_PG`), of a test's own:
//! `pg_basebackup` into a [`PgCluster`], started on a free port. Stopped (`-m immediate`) and
//! deleted when dropped, pass or fail.

use std::time::Duration;

use godwit_driver::{Conn, DbUrl, Value};

use super::pg_cluster::PgCluster;
use super::{path_str, poll_until, text};

/// What the primary must allow for a replica, said when it does not.
const PRIMARY_SETUP: &str = "the replica tests need the test PostgreSQL server to accept \
    replication connections from 127.0.0.1 for the test user: add \
    `host replication godwit 127.0.0.1/32 scram-sha-256` to its pg_hba.conf and reload \
    (SELECT pg_reload_conf()), with wal_level = replica and max_wal_senders > 0 \
    (scripts/test-services.sh adds the line on a machine it sets up)";

/// Settings a hot standby must hold at least as high as its primary.
const AT_LEAST_PRIMARY: [&str; 5] = [
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
];

/// The replica's own configuration: a Debian primary keeps its files outside the data
/// directory, so the copy has none (or the primary's, which name its port and paths).
async fn configure(cluster: &PgCluster, primary: &str) {
    let mut conn = godwit_db::connect(&DbUrl::new(primary), &Default::default())
        .await
        .expect("connect to the primary");
    let mut conf = String::from("hot_standby = on\nfsync = off\n");
    for name in AT_LEAST_PRIMARY {
        let rows = conn
            .query(&format!("SELECT current_setting('{name}')"), &[])
            .await
            .expect("read the primary's settings");
        let value = rows[0].get(0).as_str().unwrap_or_default().to_string();
        conf.push_str(&format!("{name} = {value}\n"));
    }
    cluster.write_config("postgresql.conf", &conf);
    cluster.write_config(
        "pg_hba.conf",
        "local all all trust\nhost all all 127.0.0.1/32 trust\n",
    );
    cluster.write_config("pg_ident.conf", "");
}

pub struct PgReplica {
    cluster: PgCluster,
    /// The primary's URL with the replica's port.
    url: String,
}

impl PgReplica {
    /// Takes a base backup of the test server and starts it as a hot standby streaming from
    /// it; returns once it streams.
    pub async fn start() -> PgReplica {
        let primary = std::env::var("GODWIT_TEST_PG").expect(
            "GODWIT_TEST_PG is not set: run the tests with scripts/test.sh, which starts PostgreSQL",
        );
        let mut cluster = PgCluster::empty("godwit-replica");
        let data = cluster.data();
        let backup = cluster.tool(
            "pg_basebackup",
            &[
                "-d",
                &primary,
                "-D",
                path_str(&data),
                "-R",
                "-X",
                "stream",
                // An immediate checkpoint: a spread one may take minutes.
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        assert!(
            backup.status.success(),
            "pg_basebackup from the test server failed: {}{}\n{PRIMARY_SETUP}",
            text(&backup.stdout),
            text(&backup.stderr)
        );
        configure(&cluster, &primary).await;
        cluster.start(&[]);
        let (credentials, rest) = primary.rsplit_once('@').expect("user@host in the URL");
        let (_, database) = rest.split_once('/').expect("a database in the URL");
        let url = format!("{credentials}@127.0.0.1:{}/{database}", cluster.port());
        let replica = PgReplica { cluster, url };
        replica.wait_streaming().await;
        replica
    }

    async fn wait_streaming(&self) {
        poll_until(
            "the replica to stream from the test server",
            Duration::from_secs(60),
            async || {
                let Ok(mut conn) = self.try_conn().await else {
                    return false;
                };
                conn.query(
                    "SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'",
                    &[],
                )
                .await
                .is_ok_and(|rows| !rows.is_empty())
            },
        )
        .await;
    }

    /// The replica's URL: the test server's, on the replica's port.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn try_conn(&self) -> godwit_driver::Result<Box<dyn Conn>> {
        godwit_db::connect(&DbUrl::new(self.url.clone()), &Default::default()).await
    }

    /// Runs `sql` on the replica (`SELECT pg_wal_replay_pause()`, say).
    pub async fn exec(&self, sql: &str) {
        let mut conn = self.try_conn().await.expect("connect to the replica");
        conn.execute_unprepared(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql} on the replica: {e}"));
    }

    /// Waits until the replica has replayed everything the primary had written when called.
    pub async fn catch_up(&self) {
        let primary = std::env::var("GODWIT_TEST_PG").expect("GODWIT_TEST_PG");
        let mut conn = godwit_db::connect(&DbUrl::new(primary), &Default::default())
            .await
            .expect("connect to the primary");
        let rows = conn
            .query("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .expect("the primary's WAL position");
        let lsn = rows[0].get(0).as_str().unwrap_or_default().to_string();
        poll_until(
            "the replica to replay what the primary wrote",
            Duration::from_secs(60),
            async || {
                let Ok(mut conn) = self.try_conn().await else {
                    return false;
                };
                let sql = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
                conn.query(&sql, &[])
                    .await
                    .is_ok_and(|rows| rows.first().map(|r| r.get(0)) == Some(&Value::Bool(true)))
            },
        )
        .await;
    }

    pub fn log(&self) -> String {
        self.cluster.log()
    }
}

impl Drop for PgReplica {
    fn drop(&mut self) {
        // The cluster stops after this, when the field is dropped.
        if std::thread::panicking() {
            eprintln!("replica log:\n{}", self.log());
        }
    }
}
