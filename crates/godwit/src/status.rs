use godwit_driver::{ConnectOptions, DbUrl};
use godwit_plan::Plan;
use godwit_state::{Control, RunState, RunStatus, StateStore};

/// Pauses, resumes, cancels or retries the plan's run through its state database, for every
/// worker at once. Returns the run's state before, or `None` when no run of the plan is stored.
///
/// # Errors
/// When the state database cannot be reached.
pub async fn control(
    plan: &Plan,
    action: Control,
) -> Result<Option<RunState>, godwit_driver::Error> {
    control_run(&DbUrl::new(plan.state_url()), &plan.name, action).await
}

/// What a control action did to a run that was `before`: whether it applied (`applied`: the
/// run is now as asked) and the sentence that tells the user, the same for the command line
/// and the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlReply {
    /// Whether the run is now as the action asked (already being so counts).
    pub applied: bool,
    /// What happened, or why nothing could.
    pub message: String,
}

/// The [`ControlReply`] for `action` on the run `name`, which was `before`.
pub fn control_reply(name: &str, action: Control, before: RunState) -> ControlReply {
    let (applied, message) = match (action, before) {
        (Control::Pause, RunState::Pending | RunState::Running) => (
            true,
            format!("paused {name:?}: no new batch is claimed; batches in flight finish"),
        ),
        (Control::Pause, RunState::Paused) => (true, format!("{name:?} is already paused")),
        (Control::Resume, RunState::Paused) => (true, format!("resumed {name:?}")),
        (Control::Resume, RunState::Pending | RunState::Running) => {
            (true, format!("{name:?} is not paused"))
        }
        (Control::Cancel, RunState::Cancelled) => (true, format!("{name:?} is already cancelled")),
        (Control::Cancel, RunState::Done) => (
            false,
            format!("{name:?} is done; there is nothing to cancel"),
        ),
        (Control::Cancel, _) => (
            true,
            format!("cancelled {name:?}: no new batch is claimed; batches in flight finish"),
        ),
        (Control::Retry, RunState::Failed) => (
            true,
            format!(
                "re-queued the failed batches of {name:?}; workers on it take them up, or \
                 `godwit run` it"
            ),
        ),
        (Control::Retry, RunState::Pending | RunState::Running | RunState::Paused) => {
            (true, format!("re-queued any failed batches of {name:?}"))
        }
        (_, state) => (
            false,
            format!(
                "{name:?} is {}; cannot {}",
                state.as_str(),
                action_name(action)
            ),
        ),
    };
    ControlReply { applied, message }
}

fn action_name(action: Control) -> &'static str {
    match action {
        Control::Pause => "pause it",
        Control::Resume => "resume it",
        Control::Cancel => "cancel it",
        Control::Retry => "retry it",
    }
}

/// [`control`] for the run named `run` in the state database at `url`, without its plan file.
///
/// # Errors
/// When the state database cannot be reached.
pub async fn control_run(
    url: &DbUrl,
    run: &str,
    action: Control,
) -> Result<Option<RunState>, godwit_driver::Error> {
    let mut conn = godwit_db::connect(url, &ConnectOptions::default()).await?;
    if conn.table_info("godwit_runs").await?.is_none() {
        return Ok(None);
    }
    let store = StateStore::open(url, conn).await?;
    store.control(run, action).await
}

/// The progress of every run stored in the state database at `url`, oldest first.
///
/// # Errors
/// When the state database cannot be reached.
pub async fn list_runs(url: &DbUrl) -> Result<Vec<RunStatus>, godwit_driver::Error> {
    let Some(store) = reader(url).await? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for name in store.run_names().await? {
        if let Some(status) = store.status(&name).await? {
            out.push(status);
        }
    }
    Ok(out)
}

/// [`status`] for the run named `run` in the state database at `url`, without its plan file.
///
/// # Errors
/// When the state database cannot be reached.
pub async fn status_run(url: &DbUrl, run: &str) -> Result<Option<RunStatus>, godwit_driver::Error> {
    match reader(url).await? {
        Some(store) => store.status(run).await,
        None => Ok(None),
    }
}

/// The report of the run named `run` in the state database at `url` (`godwit report`): its
/// durations and counts per step, read from the state tables without changing anything.
/// `Ok(None)` when no such run is stored.
///
/// # Errors
/// When the state database cannot be reached.
pub async fn report_run(
    url: &DbUrl,
    run: &str,
) -> Result<Option<godwit_report::Report>, godwit_driver::Error> {
    match reader(url).await? {
        Some(store) => godwit_report::build(&store, run).await,
        None => Ok(None),
    }
}

/// Opens the state tables for reading, or `None` when there are none: reading must not create
/// them in someone's database.
async fn reader(url: &DbUrl) -> Result<Option<StateStore>, godwit_driver::Error> {
    let mut conn = godwit_db::connect(url, &ConnectOptions::default()).await?;
    if conn.table_info("godwit_runs").await?.is_none() {
        return Ok(None);
    }
    Ok(Some(StateStore::open_reader(url, conn).await?))
}

/// Reads the progress of the plan's run from its state database, without joining the run.
/// `Ok(None)` when no such run is stored.
///
/// # Errors
/// When the state database cannot be reached.
pub async fn status(plan: &Plan) -> Result<Option<RunStatus>, godwit_driver::Error> {
    status_run(&DbUrl::new(plan.state_url()), &plan.name).await
}

/// The rows the run's transforms skipped (`on_row_error = "skip"`), with their errors: every
/// step's, or `step`'s only; at most `limit`.
///
/// # Errors
/// When the state database cannot be reached.
pub async fn dead_letters(
    url: &DbUrl,
    run: &str,
    step: Option<&str>,
    limit: Option<u64>,
) -> Result<Vec<godwit_state::DeadLetterRow>, godwit_driver::Error> {
    match reader(url).await? {
        Some(store) => store.dead_letters(run, step, limit).await,
        None => Ok(Vec::new()),
    }
}
