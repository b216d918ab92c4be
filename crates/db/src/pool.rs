//! A small pool of connections to the plan's database, one per batch in flight.
//!
//! Connections leave the pool while a batch uses them and come back only when the batch ended
//! cleanly, so a connection whose state is unknown (an error mid-transaction, a lost socket) is
//! dropped rather than reused.
//!
//! Every connection carries a database-side limit on how long a transaction may sit idle: the
//! lease. A worker frozen mid-batch (SIGSTOP, a paused VM) loses its lease and, with it, the
//! batch to another worker; the limit makes the server roll the frozen transaction back and
//! free its row locks, so that the new owner does not wait on them forever. (The claim token
//! checked in the batch's own transaction already stops the frozen worker from committing.)

use std::sync::Mutex;
use std::time::{Duration, Instant};

use godwit_driver::{Conn, ConnectOptions, DbUrl, Result};

/// Connections to one database, handed to one batch at a time.
pub struct ConnPool {
    url: DbUrl,
    lease: Duration,
    /// Connections open on a client with the database's bulk path ([`ConnectOptions::bulk_load`]).
    bulk_load: bool,
    idle: Mutex<Vec<(Box<dyn Conn>, Instant)>>,
}

impl ConnPool {
    /// A pool for `url`; `lease` bounds how long a transaction may sit idle on the server.
    pub fn new(url: DbUrl, lease: Duration) -> ConnPool {
        ConnPool {
            url,
            lease,
            bulk_load: false,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The pool, its connections opened with the database's bulk path when `on` (a plan
    /// that copies into the database).
    pub fn with_bulk_load(mut self, on: bool) -> ConnPool {
        self.bulk_load = on;
        self
    }

    /// The database the pool connects to.
    pub fn url(&self) -> &DbUrl {
        &self.url
    }

    /// An idle connection, or a new one.
    pub async fn take(&self) -> Result<Box<dyn Conn>> {
        // MySQL closes a connection idle for longer than the lease (its only idle limit is
        // `wait_timeout`, which covers idle sessions too): leave those behind.
        let fresh = self.lease / 2;
        let idle = self.idle.lock().ok().and_then(|mut idle| {
            idle.retain(|(_, since)| since.elapsed() < fresh);
            idle.pop()
        });
        match idle {
            Some((conn, _)) => Ok(conn),
            None => self.connect().await,
        }
    }

    /// Gives back a connection whose batch ended cleanly.
    pub fn give(&self, conn: Box<dyn Conn>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push((conn, Instant::now()));
        }
    }

    async fn connect(&self) -> Result<Box<dyn Conn>> {
        let options = ConnectOptions {
            bulk_load: self.bulk_load,
            ..ConnectOptions::default()
        };
        let mut conn = crate::connect(&self.url, &options).await?;
        // At least a second: the databases count the limit in whole seconds or milliseconds,
        // and zero would mean none. SQLite has no such limit (one machine, one file: a frozen
        // process holds the write lock until it resumes).
        let lease = self.lease.max(Duration::from_secs(1));
        let setup = conn.forms().lease_session(lease);
        if let Some(setup) = setup {
            conn.execute_unprepared(&setup).await?;
        }
        Ok(conn)
    }
}
