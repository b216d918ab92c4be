//! Which run a command is about: a plan file loaded (every error in it printed), or a state
//! database and a run name; and the exit code when that state database cannot be read.

use std::path::Path;

use godwit::plan::Plan;

use crate::args::TargetArgs;
use crate::exit;

/// The exit code when the state database cannot be read: a URL godwit cannot use is a mistake
/// in the plan or the command, not a failed run.
pub(crate) fn state_error_code(e: &godwit::driver::Error) -> u8 {
    if e.kind() == godwit::driver::ErrorKind::Config {
        exit::INVALID
    } else {
        exit::FAILED
    }
}

/// Loads a plan, or prints every error in it.
pub(crate) fn load(path: &Path) -> Result<Plan, u8> {
    godwit::plan::load(path).map_err(|errors| {
        for e in &errors.0 {
            eprintln!("error: {e}");
        }
        exit::INVALID
    })
}

/// The run a command is about: its label for messages, its state database and its name.
pub(crate) fn target(args: &TargetArgs) -> Result<(String, godwit::driver::DbUrl, String), u8> {
    Ok(match (&args.plan, &args.database, &args.run) {
        (Some(path), _, _) => {
            let plan = load(path)?;
            (
                path.display().to_string(),
                godwit::driver::DbUrl::new(plan.state_url()),
                plan.name,
            )
        }
        (None, Some(url), Some(run)) => {
            let url = godwit::driver::DbUrl::new(url.clone());
            (url.to_string(), url, run.clone())
        }
        _ => unreachable!("clap requires a plan, or --database with --run"),
    })
}
