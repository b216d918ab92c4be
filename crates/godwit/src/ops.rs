//! Operating a run from anywhere while it runs: changing its settings for every worker
//! (`godwit set`) and waiting for its end (`godwit wait`).

use std::time::{Duration, Instant};

use godwit_driver::{ConnectOptions, DbUrl, Error};
use godwit_state::{RunSettings, RunState, RunStatus, StateStore};

/// What [`set_run`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct SettingsChange {
    /// The run's state when the settings were written (or refused).
    pub state: RunState,
    /// The run's settings after: the ones asked for and those set before.
    pub settings: RunSettings,
}

impl SettingsChange {
    /// Whether the settings were written: not for a run that is done or cancelled, whose
    /// workers have left.
    pub fn applied(&self) -> bool {
        !matches!(self.state, RunState::Done | RunState::Cancelled)
    }
}

/// Changes the settings of the run named `run` in the state database at `url` for every
/// worker on it (they read them within a second): the fields of `changes` that are `Some`.
/// A run that is done or cancelled is left as it is ([`SettingsChange::applied`]). `None`
/// when no such run is stored.
///
/// # Errors
/// When the state database cannot be reached.
pub async fn set_run(
    url: &DbUrl,
    run: &str,
    changes: RunSettings,
) -> Result<Option<SettingsChange>, Error> {
    let mut conn = godwit_db::connect(url, &ConnectOptions::default()).await?;
    // No state tables: nothing is stored, and asking must not create them.
    if conn.table_info("godwit_runs").await?.is_none() {
        return Ok(None);
    }
    // Opened to write: tables of an older version gain the settings' columns.
    let store = StateStore::open(url, conn).await?;
    let Some(control) = store.run_control(run).await? else {
        return Ok(None);
    };
    let found = SettingsChange {
        state: control.state,
        settings: control.settings,
    };
    if !found.applied() {
        return Ok(Some(found));
    }
    let settings = store.set_run_settings(run, changes).await?;
    Ok(settings.map(|settings| SettingsChange { settings, ..found }))
}

/// Keeps `estimate` of `plan` in its state database (creating the state tables if need be),
/// for `godwit report` to show beside the run's actual durations; returns when it was
/// recorded, on the state database's clock.
///
/// # Errors
/// When the state database cannot be reached or written.
pub async fn record_estimate(
    plan: &godwit_plan::Plan,
    estimate: &godwit_state::Estimate,
) -> Result<i64, godwit_driver::Error> {
    let url = DbUrl::new(plan.state_url().to_string());
    let conn = godwit_db::connect(&url, &ConnectOptions::default()).await?;
    let store = StateStore::open(&url, conn).await?;
    store.record_estimate(&plan.name, estimate).await
}

/// How [`wait_run`] ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Waited {
    /// The run ended: done, failed or cancelled (its `state` says which).
    Ended(RunStatus),
    /// The timeout passed first; the run as it stood then.
    TimedOut(RunStatus),
}

/// How often [`wait_run`] reads the run.
const WAIT_POLL: Duration = Duration::from_secs(1);
/// How long [`wait_run`] rides out a state database it cannot read (a restart, a network
/// blip) before it gives up.
const WAIT_OUTAGE: Duration = Duration::from_secs(30);

/// Waits until the run named `run` in the state database at `url` is done, failed or
/// cancelled, or `timeout` passes, reading it about once a second; a paused or pending run is
/// waited for. `None` when no such run is stored. Reads only.
///
/// # Errors
/// When the state database cannot be read at first, or for 30 seconds on end.
pub async fn wait_run(
    url: &DbUrl,
    run: &str,
    timeout: Option<Duration>,
) -> Result<Option<Waited>, Error> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut conn = godwit_db::connect(url, &ConnectOptions::default()).await?;
    if conn.table_info("godwit_runs").await?.is_none() {
        return Ok(None);
    }
    let store = StateStore::open_reader(url, conn).await?;
    let Some(mut status) = store.status(run).await? else {
        return Ok(None);
    };
    let mut failing_since: Option<Instant> = None;
    loop {
        if matches!(status.state.as_str(), "done" | "failed" | "cancelled") {
            return Ok(Some(Waited::Ended(status)));
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok(Some(Waited::TimedOut(status)));
        }
        let pause = deadline.map_or(WAIT_POLL, |d| WAIT_POLL.min(d - now));
        tokio::time::sleep(pause).await;
        match store.status(run).await {
            Ok(Some(now)) => {
                status = now;
                failing_since = None;
            }
            // The run's record was removed while we waited: nothing is left to wait for.
            Ok(None) => return Ok(None),
            Err(e) if e.kind().is_retryable() => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= WAIT_OUTAGE {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}
