//! Runs a plan from Rust, printing each step as it finishes:
//!
//! ```sh
//! cargo run -p godwit --example run_plan -- path/to/plan.toml
//! ```

use godwit::{Event, EventSink, RunOptions, RunOutcome, StopLevel};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: run_plan PLAN")?;
    let plan = godwit::plan::load(std::path::Path::new(&path))?;

    // Ctrl-C: let the batches in flight commit, then stop; running again resumes.
    let (stop, signal) = godwit::stop_pair();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.request(StopLevel::Drain);
    });

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            if let Event::StepDone { step } = event {
                println!("step {step} done");
            }
        }
    });
    let outcome = godwit::run(&plan, RunOptions::default(), signal, EventSink::new(tx)).await?;
    printer.abort();
    match outcome {
        RunOutcome::Done | RunOutcome::AlreadyDone => println!("{} is done", plan.name),
        RunOutcome::Stopped => println!("stopped; run again to resume"),
        RunOutcome::Failed(message) => return Err(message.into()),
        RunOutcome::Cancelled => return Err("the run was cancelled".into()),
    }
    Ok(())
}
