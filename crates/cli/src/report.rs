//! `godwit report`: a run's durations for release notes, written to stdout or a file.

use godwit::report;

use crate::args::{ReportArgs, ReportFormat};
use crate::exit;
use crate::target::{state_error_code, target};

pub(crate) async fn report(args: ReportArgs) -> anyhow::Result<u8> {
    let (label, url, name) = match target(&args.target) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let found = match godwit::report_run(&url, &name).await {
        Ok(found) => found,
        Err(e) => {
            eprintln!("error: {label}: cannot read the state database: {e}");
            return Ok(state_error_code(&e));
        }
    };
    let Some(found) = found else {
        eprintln!("error: {label}: no run of {name:?} is stored in {url}; run or submit it first");
        return Ok(exit::FAILED);
    };
    let text = match args.format {
        ReportFormat::Md => report::markdown(&found),
        ReportFormat::Json => report::json(&found) + "\n",
        ReportFormat::Html => report::html(&found),
    };
    match &args.output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &text) {
                eprintln!("error: cannot write the report to {}: {e}", path.display());
                return Ok(exit::FAILED);
            }
            eprintln!(
                "wrote the report of {name:?} ({}) to {}",
                found.state,
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(exit::DONE)
}
