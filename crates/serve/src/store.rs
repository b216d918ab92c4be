//! The dashboard's connection to the state database: opened on the first request that needs
//! it, kept for the next ones (the state store reconnects by itself after an error), and
//! never creating tables: a database without godwit's tables simply has no runs.

use std::sync::Arc;

use godwit::driver::{DbUrl, Error};
use godwit::state::StateStore;

pub(crate) struct Store {
    url: DbUrl,
    open: tokio::sync::Mutex<Option<Arc<StateStore>>>,
}

impl Store {
    pub(crate) fn new(url: DbUrl) -> Store {
        Store {
            url,
            open: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) fn url(&self) -> &DbUrl {
        &self.url
    }

    /// The state tables, or `None` while the database has none.
    pub(crate) async fn reader(&self) -> Result<Option<Arc<StateStore>>, Error> {
        let mut open = self.open.lock().await;
        if let Some(store) = open.as_ref() {
            return Ok(Some(store.clone()));
        }
        let mut conn = godwit::connect(&self.url).await?;
        if conn.table_info("godwit_runs").await?.is_none() {
            return Ok(None);
        }
        let store = Arc::new(StateStore::open_reader(&self.url, conn).await?);
        *open = Some(store.clone());
        Ok(Some(store))
    }
}
