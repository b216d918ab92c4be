//! `godwit set` and `godwit wait`: a running run operated from anywhere, and their exit codes.

use godwit::driver::DbUrl;
use godwit::state::{RunSettings, RunState, RunStatus};
use godwit::Waited;

use crate::args::{SetArgs, WaitArgs};
use crate::exit;
use crate::progress::{describe_settings, thousands};
use crate::target::{state_error_code, target};

/// What `set` and `wait` say of a run that is not stored (exit 2: the command names a run
/// that does not exist).
fn not_stored(label: &str, name: &str, url: &DbUrl) -> u8 {
    eprintln!("error: {label}: no run of {name:?} is stored in {url}; submit or run it first");
    exit::INVALID
}

pub(crate) async fn set(args: SetArgs) -> anyhow::Result<u8> {
    let (label, url, name) = match target(&args.target) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let changes = RunSettings {
        concurrency: args.concurrency,
        batch_size: args.batch_size,
        max_rows_per_second: args.max_rows_per_second,
    };
    let change = match godwit::set_run(&url, &name, changes).await {
        Ok(change) => change,
        Err(e) => {
            eprintln!("error: {label}: cannot reach the state database: {e}");
            return Ok(state_error_code(&e));
        }
    };
    let Some(change) = change else {
        return Ok(not_stored(&label, &name, &url));
    };
    if !change.applied() {
        eprintln!(
            "error: {label}: {name:?} is {}; there is no worker left to change (`godwit run --restart` runs it again)",
            change.state.as_str()
        );
        return Ok(exit::INVALID);
    }
    let note = match change.state {
        RunState::Paused => "; the run is paused: `godwit resume` it",
        RunState::Failed => "; the run failed: `godwit retry` it",
        RunState::Pending => "; no worker has started the run yet",
        _ => "",
    };
    eprintln!(
        "{name}: {} (workers pick it up within a second){note}",
        describe_settings(&changes)
    );
    Ok(exit::DONE)
}

pub(crate) async fn wait(args: WaitArgs) -> anyhow::Result<u8> {
    let (label, url, name) = match target(&args.target) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let waited = match godwit::wait_run(&url, &name, args.timeout).await {
        Ok(waited) => waited,
        Err(e) => {
            eprintln!("error: {label}: cannot read the state database: {e}");
            return Ok(state_error_code(&e));
        }
    };
    match waited {
        None => Ok(not_stored(&label, &name, &url)),
        Some(Waited::Ended(status)) => Ok(ended(&label, &status)),
        Some(Waited::TimedOut(status)) => {
            let timeout = args.timeout.unwrap_or_default();
            let into = if status.elapsed_seconds > 0.0 {
                format!(" ({:.1}s into the run)", status.elapsed_seconds)
            } else {
                String::new()
            };
            eprintln!(
                "{}: still {} after waiting {timeout:?}{into}; `godwit wait` again to go on waiting",
                status.plan, status.state
            );
            for step in &status.steps {
                eprintln!("  {}", step_progress(step));
            }
            Ok(exit::STOPPED)
        }
    }
}

/// Says how a run ended and returns `wait`'s exit code for it.
fn ended(label: &str, status: &RunStatus) -> u8 {
    let name = &status.plan;
    match status.state.as_str() {
        "done" => {
            let rows: i64 = status.steps.iter().map(|s| s.rows_done).sum();
            eprintln!(
                "{name}: done in {:.1}s ({} rows)",
                status.elapsed_seconds,
                thousands(rows)
            );
            exit::DONE
        }
        "cancelled" => {
            eprintln!("error: {label}: {name:?} was cancelled (`godwit cancel`)");
            exit::FAILED
        }
        _ => {
            let error = status.error.as_deref().unwrap_or("no error was recorded");
            eprintln!("error: {label}: {name:?} failed: {error}");
            exit::FAILED
        }
    }
}

/// One step's progress on a line: `customers  running  1,200/5,000 rows in 12 batches`.
fn step_progress(step: &godwit::state::StepStatus) -> String {
    let rows = match step.rows_total_estimate {
        Some(total) => format!("{}/{}", thousands(step.rows_done), thousands(total)),
        None => thousands(step.rows_done),
    };
    let throttled = step
        .throttled
        .as_ref()
        .map(|reason| format!(" (throttled: {reason})"))
        .unwrap_or_default();
    format!(
        "{}  {}  {rows} rows in {} batches{throttled}",
        step.name,
        step.state,
        thousands(step.batches_done)
    )
}
