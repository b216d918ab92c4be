//! A small pool of connections to the plan's database, one per batch in flight.
//!
//! Connections leave the pool while a batch uses them and come back only when the batch ended
//! cleanly, so a connection whose state is unknown (an error mid-transaction, a lost socket) is
//! dropped rather than reused.

use std::sync::Mutex;

use godwit_driver::{Conn, ConnectOptions, DbUrl, Result};

pub(crate) struct ConnPool {
    url: DbUrl,
    idle: Mutex<Vec<Box<dyn Conn>>>,
}

impl ConnPool {
    pub(crate) fn new(url: DbUrl) -> ConnPool {
        ConnPool {
            url,
            idle: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn url(&self) -> &DbUrl {
        &self.url
    }

    pub(crate) async fn take(&self) -> Result<Box<dyn Conn>> {
        let idle = self.idle.lock().map(|mut idle| idle.pop()).ok().flatten();
        match idle {
            Some(conn) => Ok(conn),
            None => godwit_db::connect(&self.url, &ConnectOptions::default()).await,
        }
    }

    pub(crate) fn give(&self, conn: Box<dyn Conn>) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }
}
