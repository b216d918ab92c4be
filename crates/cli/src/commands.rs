//! What each command does, and the exit code it ends with.

use std::time::{Duration, Instant};

use anyhow::Context;
use godwit::plan::Plan;
use godwit::state::Control;
use godwit::{EventSink, RunErrorKind, RunOptions, RunOutcome, StopHandle, StopLevel};
use godwit_observe::Metrics;

use crate::args::{
    Args, CheckArgs, Command, DeadLettersArgs, DemoArgs, PlanArgs, RunArgs, StatusArgs, TargetArgs,
    VerifyArgs, WorkerArgs,
};
use crate::progress::{self, Mode};
use crate::target::{load, state_error_code, target};
use crate::{exit, ops};

pub(crate) async fn dispatch(args: Args) -> anyhow::Result<u8> {
    match args.command {
        Command::Run(a) => run(a).await,
        Command::Status(a) => status(a).await,
        Command::Check(a) => check(a).await,
        Command::Demo(a) => demo(a).await,
        Command::Submit(a) => submit(a).await,
        Command::Worker(a) => worker(a).await,
        Command::Pause(a) => control(a, Control::Pause).await,
        Command::Resume(a) => control(a, Control::Resume).await,
        Command::Cancel(a) => control(a, Control::Cancel).await,
        Command::Retry(a) => control(a, Control::Retry).await,
        Command::Set(a) => ops::set(a).await,
        Command::Wait(a) => ops::wait(a).await,
        Command::DeadLetters(a) => dead_letters(a).await,
        Command::Verify(a) => verify(a).await,
        Command::Serve(a) => crate::serve::serve(a).await,
        Command::Report(a) => crate::report::report(a).await,
        Command::Estimate(a) => crate::estimate::estimate(a).await,
    }
}

/// The exit code of a run that could not start: the plan is invalid (nothing changed), or a
/// database could not be reached.
fn run_error_code(e: &godwit::RunError) -> u8 {
    match e.kind() {
        RunErrorKind::Invalid => exit::INVALID,
        // The run was restarted by another process while this one worked on it: this
        // process's plan is no longer the run's, and it stopped.
        RunErrorKind::Database | RunErrorKind::Restarted => exit::FAILED,
    }
}

/// Says why a run (or `submit`, `verify`) could not start, naming the plan file once: a
/// message that begins with its own `file:line:col` is printed as it is.
pub(crate) fn run_failed_to_start(path: &std::path::Path, e: &godwit::RunError) -> u8 {
    let message = e.to_string();
    let file = path.display().to_string();
    if message.starts_with(&format!("{file}:")) {
        eprintln!("error: {message}");
    } else {
        eprintln!("error: {file}: {message}");
    }
    run_error_code(e)
}

/// SIGINT or SIGTERM once: stop claiming and let batches in flight commit, for at most
/// `grace`. Twice, or when the grace period is over: abort them (they roll back and are
/// released for another process).
pub(crate) fn watch_signals(stop: StopHandle, quiet: bool, grace: Duration) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if stop.level() == StopLevel::Run {
                if !quiet {
                    eprintln!(
                        "stopping: finishing the batches in flight (signal again to abort them)"
                    );
                }
                stop.request(StopLevel::Drain);
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(grace).await;
                    if stop.level() < StopLevel::Abort {
                        if !quiet {
                            eprintln!(
                                "aborting: the batches in flight did not finish within {grace:?}; rolling them back"
                            );
                        }
                        stop.request(StopLevel::Abort);
                    }
                });
            } else {
                if !quiet {
                    eprintln!("aborting: rolling back the batches in flight");
                }
                stop.request(StopLevel::Abort);
            }
        }
    });
}

async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let mode = Mode::pick(args.work.json, args.work.quiet);
    if args.dry_run {
        return crate::dry_run::dry_run(&plan, &args, mode).await;
    }
    let options = RunOptions {
        concurrency: args.concurrency.map(|n| n as usize),
        restart: if args.restart {
            godwit::Restart::Forget
        } else {
            godwit::Restart::Resume
        },
        ..RunOptions::default()
    };
    if args.restart && mode != Mode::Quiet && mode != Mode::Json {
        eprintln!(
            "restarting {:?}: stored progress is forgotten; rows already changed stay changed",
            plan.name
        );
    }
    // The state database keeps the plan with such a password redacted (see `submit`), which
    // workers cannot connect with.
    let literal = plan
        .written_urls
        .iter()
        .find(|url| godwit::driver::has_password(&url.literal()));
    if let (Some(url), Mode::Human | Mode::Plain) = (literal, mode) {
        let place = godwit::plan::Place {
            file: &args.plan,
            location: url.location,
        };
        eprintln!(
            "note: {place}: `{}` holds a password written in the plan; the stored plan has it \
             as ***, so workers cannot take this run up (write it as ${{VARIABLE}} for them)",
            url.key
        );
    }
    let metrics = match serve_metrics(args.work.metrics.as_deref(), mode).await {
        Ok(metrics) => metrics,
        Err(code) => return Ok(code),
    };
    let limits = Limits {
        max_duration: args.max_duration,
        grace: args.work.grace,
    };
    execute(&plan, options, limits, mode, metrics).await
}

/// Serves Prometheus metrics at `http://ADDR/metrics` when `--metrics ADDR` asks for them.
/// Listens before any work starts: an address that cannot be had is an invalid command line
/// (exit 2), not a run that fails later.
async fn serve_metrics(addr: Option<&str>, mode: Mode) -> Result<Option<Metrics>, u8> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = match godwit_observe::listen(addr).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: --metrics: {e}");
            return Err(exit::INVALID);
        }
    };
    if let (Ok(bound), Mode::Human | Mode::Plain) = (listener.local_addr(), mode) {
        eprintln!("metrics at http://{bound}/metrics");
    }
    let metrics = Metrics::new();
    godwit_observe::serve(listener, metrics.clone());
    Ok(Some(metrics))
}

/// Stops claiming batches once `budget` (`--max-duration`) has passed, as the first signal does.
pub(crate) fn stop_after(stop: &StopHandle, budget: Option<Duration>) {
    let Some(budget) = budget else {
        return;
    };
    let stop = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(budget).await;
        stop.request(StopLevel::Drain);
    });
}

/// How long a run may take, and its batches after a signal.
struct Limits {
    max_duration: Option<Duration>,
    grace: Duration,
}

/// Runs a loaded plan with progress output (and metrics, when served) and turns the outcome
/// into an exit code.
async fn execute(
    plan: &Plan,
    options: RunOptions,
    limits: Limits,
    mode: Mode,
    metrics: Option<Metrics>,
) -> anyhow::Result<u8> {
    let Limits {
        max_duration,
        grace,
    } = limits;
    let (stop, signal) = godwit::stop_pair();
    watch_signals(stop.clone(), mode == Mode::Quiet, grace);
    stop_after(&stop, max_duration);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let renderer = progress::Renderer::spawn(mode, rx);
    // The metrics count each event as the scheduler sends it, before the progress output
    // sees it: what `--json` has printed, the metrics have counted.
    let name = plan.name.clone();
    let events = EventSink::from_fn(move |event| {
        if let Some(metrics) = &metrics {
            metrics.observe(&name, &event);
        }
        let _ = tx.send(event);
    });
    let started = Instant::now();
    let outcome = godwit::run(plan, options, signal, events).await;
    renderer.finish(&outcome).await;
    let elapsed = started.elapsed();
    match outcome {
        Ok(RunOutcome::Done) => {
            if mode == Mode::Human {
                summary(plan, elapsed).await;
            }
            Ok(exit::DONE)
        }
        Ok(RunOutcome::AlreadyDone) => {
            if mode == Mode::Human {
                eprintln!(
                    "{:?} is already done; `godwit run --restart` runs it again",
                    plan.name
                );
            }
            Ok(exit::DONE)
        }
        Ok(RunOutcome::Stopped) => {
            if mode != Mode::Quiet && mode != Mode::Json {
                eprintln!(
                    "stopped with work left after {:.1}s; run the same command again to resume",
                    elapsed.as_secs_f64()
                );
            }
            Ok(exit::STOPPED)
        }
        Ok(RunOutcome::Failed(failure)) => {
            eprintln!("error: {}: {failure}", plan.path.display());
            Ok(exit::FAILED)
        }
        Ok(RunOutcome::Cancelled) => {
            eprintln!(
                "error: {}: the run {:?} was cancelled (`godwit cancel`); the batches in flight finished",
                plan.path.display(),
                plan.name
            );
            Ok(exit::FAILED)
        }
        Err(e) => Ok(run_failed_to_start(&plan.path, &e)),
    }
}

async fn summary(plan: &Plan, elapsed: Duration) {
    let Ok(Some(status)) = godwit::status(plan).await else {
        return;
    };
    for step in &status.steps {
        eprintln!(
            "  {:<24} {:>12} rows in {:>6} batches",
            step.name,
            progress::thousands(step.rows_done),
            progress::thousands(step.batches_done)
        );
    }
    eprintln!("{:?} done in {:.1}s", plan.name, elapsed.as_secs_f64());
}

async fn status(args: StatusArgs) -> anyhow::Result<u8> {
    let (label, found) = match (&args.plan, &args.database) {
        (Some(path), _) => {
            let plan = match load(path) {
                Ok(p) => p,
                Err(code) => return Ok(code),
            };
            let found = godwit::status(&plan)
                .await
                .map(|s| vec![s.unwrap_or_else(|| progress::not_started(&plan))]);
            (path.display().to_string(), found)
        }
        (None, Some(url)) => {
            let url = godwit::driver::DbUrl::new(url.clone());
            let found = match &args.run {
                Some(run) => godwit::status_run(&url, run)
                    .await
                    .map(|s| s.into_iter().collect::<Vec<_>>()),
                None => godwit::list_runs(&url).await,
            };
            (url.to_string(), found)
        }
        (None, None) => unreachable!("clap requires a plan or --database"),
    };
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            eprintln!("error: {label}: cannot read the state database: {e}");
            return Ok(state_error_code(&e));
        }
    };
    if let (Some(run), true) = (&args.run, found.is_empty()) {
        eprintln!("error: {label}: no run named {run:?} is stored there");
        return Ok(exit::FAILED);
    }
    let listing = args.plan.is_none() && args.run.is_none();
    if args.json {
        if listing {
            outln!("{}", serde_json::to_string(&found)?);
        } else {
            for status in &found {
                outln!("{}", serde_json::to_string(status)?);
            }
        }
    } else {
        if listing && found.is_empty() {
            eprintln!("{label}: no run is stored there");
        }
        for (i, status) in found.iter().enumerate() {
            if i > 0 {
                println!();
            }
            print!("{}", progress::status_table(status));
        }
    }
    Ok(exit::DONE)
}

async fn check(args: CheckArgs) -> anyhow::Result<u8> {
    let name_guess = args
        .plan
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let report = match godwit::plan::load(&args.plan) {
        Ok(plan) => godwit::check::judge(&plan).await,
        Err(errors) => godwit::check::Judgement::from_plan_errors(&name_guess, &errors),
    };
    if args.json {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        for p in &report.problems {
            outln!("problem: {}", p.message);
            if let Some(fix) = &p.fix {
                outln!("  fix: {fix}");
            }
        }
        for f in &report.findings {
            outln!(
                "{} [{}]: step {:?}: {}",
                f.severity,
                f.code,
                f.step,
                f.message
            );
            if let Some(fix) = &f.fix {
                outln!("  fix: {fix}");
            }
        }
        if report.valid {
            outln!("{}: plan {:?} is valid", args.plan.display(), report.plan);
        }
    }
    let warned = report.findings.iter().any(|f| f.severity == "warning");
    Ok(if !report.valid {
        exit::INVALID
    } else if args.deny_warnings && warned {
        exit::FAILED
    } else {
        exit::DONE
    })
}

async fn demo(args: DemoArgs) -> anyhow::Result<u8> {
    let mode = Mode::pick(args.json, false);
    let say = |line: String| {
        if mode == Mode::Human || mode == Mode::Plain {
            eprintln!("{line}");
        }
    };
    let built = Instant::now();
    let demo = godwit::demo::prepare(&args.dir, args.rows)
        .await
        .with_context(|| format!("cannot build the demo database in {}", args.dir.display()))?;
    say(format!(
        "built {} with {} customers, {} of them with an old 11-digit number ({:.1}s)",
        demo.db_path.display(),
        progress::thousands(demo.rows),
        progress::thousands(demo.old_numbers),
        built.elapsed().as_secs_f64()
    ));
    let samples = demo_samples(&demo).await?;
    say("running examples/vn-phones.toml".to_string());
    let started = Instant::now();
    let options = RunOptions {
        concurrency: args.concurrency.map(|n| n as usize),
        ..RunOptions::default()
    };
    let limits = Limits {
        max_duration: None,
        grace: Duration::from_secs(25),
    };
    let code = execute(&demo.plan, options, limits, mode, None).await?;
    if code != exit::DONE {
        return Ok(code);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = demo_samples_after(&demo, &samples).await?;
    let left = {
        let url = godwit::driver::DbUrl::new(demo.plan.database.clone());
        let mut conn = godwit_db_connect(&url).await?;
        godwit::demo::count_old(conn.as_mut()).await?
    };
    say(format!(
        "rewrote {} phone numbers in {elapsed:.1}s ({} rows/s); {left} old numbers left",
        progress::thousands(demo.old_numbers - left),
        progress::thousands(((demo.old_numbers - left) as f64 / elapsed.max(1e-9)) as i64),
    ));
    for ((id, before), now) in samples.iter().zip(after) {
        say(format!("  customer {id}: {before} -> {now}"));
    }
    Ok(exit::DONE)
}

async fn godwit_db_connect(
    url: &godwit::driver::DbUrl,
) -> anyhow::Result<Box<dyn godwit::driver::Conn>> {
    Ok(godwit::connect(url).await?)
}

async fn demo_samples(demo: &godwit::demo::Demo) -> anyhow::Result<Vec<(i64, String)>> {
    let url = godwit::driver::DbUrl::new(demo.plan.database.clone());
    let mut conn = godwit_db_connect(&url).await?;
    let rows = conn
        .query(
            "SELECT id, phone FROM customers WHERE length(phone) = 11 ORDER BY id LIMIT 3",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get(0).as_i64().unwrap_or_default(),
                r.get(1).as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

async fn demo_samples_after(
    demo: &godwit::demo::Demo,
    samples: &[(i64, String)],
) -> anyhow::Result<Vec<String>> {
    let url = godwit::driver::DbUrl::new(demo.plan.database.clone());
    let mut conn = godwit_db_connect(&url).await?;
    let mut out = Vec::new();
    for (id, _) in samples {
        let rows = conn
            .query(
                "SELECT phone FROM customers WHERE id = ?",
                &[godwit::driver::Value::Int(*id)],
            )
            .await?;
        out.push(
            rows.first()
                .and_then(|r| r.get(0).as_str().map(str::to_string))
                .unwrap_or_default(),
        );
    }
    Ok(out)
}

async fn submit(args: PlanArgs) -> anyhow::Result<u8> {
    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    match godwit::submit(&plan).await {
        Ok(start) => {
            let state = godwit::driver::DbUrl::new(plan.state_url());
            match start {
                godwit::RunStart::Created => {
                    eprintln!(
                        "submitted {:?} to {state}; workers will pick it up",
                        plan.name
                    )
                }
                godwit::RunStart::Resumed => eprintln!(
                    "{:?} is already stored in {state}; it was left as it is",
                    plan.name
                ),
                godwit::RunStart::AlreadyDone => eprintln!(
                    "{:?} is already done in {state}; `godwit run --restart` runs it again",
                    plan.name
                ),
            }
            Ok(exit::DONE)
        }
        Err(e) => Ok(run_failed_to_start(&args.plan, &e)),
    }
}

async fn verify(args: VerifyArgs) -> anyhow::Result<u8> {
    let plan = match load(&args.plan) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let checks = match godwit::verify(&plan).await {
        Ok(checks) => checks,
        Err(e) => return Ok(run_failed_to_start(&args.plan, &e)),
    };
    let differs = checks.iter().any(|c| !c.differences.is_empty());
    if args.json {
        let out = serde_json::json!({
            "plan": plan.name, "ok": !differs, "steps": checks,
        });
        println!("{out}");
    } else if checks.is_empty() {
        println!("{}: no copy steps to verify", plan.name);
    } else {
        for c in &checks {
            let verdict = if c.differences.is_empty() {
                "same".to_string()
            } else {
                format!("{} ranges differ", c.differences.len())
            };
            // Rows set aside as dead letters did not arrive: counted apart, never hidden.
            let set_aside = match c.set_aside {
                0 => String::new(),
                1 => " (1 set aside as a dead letter)".to_string(),
                n => format!(
                    " ({} set aside as dead letters)",
                    progress::thousands(n as i64)
                ),
            };
            println!(
                "{}: {} ranges, {} rows in the source{set_aside}, {} in the target: {verdict}",
                c.step,
                c.ranges,
                progress::thousands(c.source_rows as i64),
                progress::thousands(c.target_rows as i64)
            );
            for d in &c.differences {
                let range = match (d.after.as_deref(), d.through.as_deref()) {
                    (None, None) => "all keys".to_string(),
                    (None, Some(t)) => format!("keys up to {t}"),
                    (Some(a), None) => format!("keys after {a}"),
                    (Some(a), Some(t)) => format!("keys after {a} up to {t}"),
                };
                let set_aside = match d.set_aside.len() {
                    0 => String::new(),
                    n => format!(" ({n} set aside)"),
                };
                println!(
                    "  {range}: {} source rows{set_aside}, {} target rows (hash {} vs {})",
                    d.source_rows, d.target_rows, d.source_hash, d.target_hash
                );
                if let Some(first) = &d.first_difference {
                    println!("    first difference: {first}");
                }
                // A range holds at most `batch_size` rows; the first few keys say enough.
                const SHOWN: usize = 10;
                for s in d.set_aside.iter().take(SHOWN) {
                    println!("    set aside: key {}: {}", s.key, s.error);
                }
                if d.set_aside.len() > SHOWN {
                    println!(
                        "    set aside: {} more (see `godwit dead-letters`)",
                        d.set_aside.len() - SHOWN
                    );
                }
            }
        }
    }
    Ok(if differs { exit::FAILED } else { exit::DONE })
}

async fn dead_letters(args: DeadLettersArgs) -> anyhow::Result<u8> {
    let (label, url, name) = match target(&args.target) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let letters = match godwit::dead_letters(&url, &name, args.step.as_deref(), args.limit).await {
        Ok(letters) => letters,
        Err(e) => {
            eprintln!("error: {label}: cannot read the state database: {e}");
            return Ok(state_error_code(&e));
        }
    };
    if args.json {
        for l in &letters {
            let row: serde_json::Value =
                serde_json::from_str(&l.row).unwrap_or_else(|_| l.row.clone().into());
            let line = serde_json::json!({
                "step": l.step, "batch": l.batch, "key": l.key, "error": l.error,
                "row": row, "created_ms": l.created_ms,
            });
            println!("{line}");
        }
        return Ok(exit::DONE);
    }
    if letters.is_empty() {
        eprintln!("{name}: no rows were skipped");
        return Ok(exit::DONE);
    }
    for l in &letters {
        println!("{}  key {}  (batch {})", l.step, l.key, l.batch);
        println!("  error: {}", l.error);
        println!("  row:   {}", l.row);
    }
    Ok(exit::DONE)
}

async fn control(args: TargetArgs, action: Control) -> anyhow::Result<u8> {
    let (label, url, name) = match target(&args) {
        Ok(t) => t,
        Err(code) => return Ok(code),
    };
    let before = match godwit::control_run(&url, &name, action).await {
        Ok(before) => before,
        Err(e) => {
            eprintln!("error: {label}: cannot reach the state database: {e}");
            return Ok(state_error_code(&e));
        }
    };
    let Some(before) = before else {
        eprintln!("error: {label}: no run of {name:?} is stored in {url}");
        return Ok(exit::FAILED);
    };
    let godwit::ControlReply { applied, message } = godwit::control_reply(&name, action, before);
    if applied {
        eprintln!("{message}");
        Ok(exit::DONE)
    } else {
        eprintln!("error: {label}: {message}");
        Ok(exit::FAILED)
    }
}

async fn worker(args: WorkerArgs) -> anyhow::Result<u8> {
    let url = godwit::driver::DbUrl::new(args.database.clone());
    let mode = Mode::pick(args.work.json, args.work.quiet);
    let metrics = match serve_metrics(args.work.metrics.as_deref(), mode).await {
        Ok(metrics) => metrics,
        Err(code) => return Ok(code),
    };
    let (stop, signal) = godwit::stop_pair();
    watch_signals(stop.clone(), mode == Mode::Quiet, args.work.grace);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            // In order, so a run's batches are counted before its `run_left` is printed.
            if let (Some(metrics), godwit::WorkerEvent::Progress { plan, event }) =
                (&metrics, &event)
            {
                metrics.observe(plan, event);
            }
            print_worker_event(mode, &event);
        }
    });
    let options = godwit::WorkerOptions {
        concurrency: Some(args.concurrency as usize),
        exit_when_idle: args.exit_when_idle,
    };
    if mode == Mode::Human || mode == Mode::Plain {
        eprintln!("worker: looking for runs in {url}");
    }
    let outcome = godwit::work(&url, options, signal, Some(tx)).await;
    let _ = printer.await;
    match outcome {
        Ok(godwit::WorkerOutcome::Idle) => {
            if mode == Mode::Human || mode == Mode::Plain {
                eprintln!("worker: no run left to work on");
            }
            Ok(exit::DONE)
        }
        Ok(godwit::WorkerOutcome::Stopped) => {
            if mode == Mode::Human || mode == Mode::Plain {
                eprintln!("worker: stopped; its claims were released");
            }
            Ok(exit::STOPPED)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(run_error_code(&e))
        }
    }
}

fn print_worker_event(mode: Mode, event: &godwit::WorkerEvent) {
    use godwit::WorkerEvent;
    if mode == Mode::Json {
        let json = match event {
            WorkerEvent::Joined { plan } => {
                serde_json::json!({"event": "run_joined", "plan": plan})
            }
            WorkerEvent::Left {
                plan,
                outcome,
                error,
            } => {
                serde_json::json!({"event": "run_left", "plan": plan, "outcome": outcome, "error": error})
            }
            WorkerEvent::Refused { plan, error } => {
                serde_json::json!({"event": "run_refused", "plan": plan, "error": error})
            }
            // A worker's output stays one line per run it joins or leaves.
            WorkerEvent::Progress { .. } => return,
        };
        outln!("{json}");
        return;
    }
    match event {
        WorkerEvent::Refused { plan, error } => {
            eprintln!("error: run {plan:?}: cannot work on it here: {error}; trying again shortly")
        }
        WorkerEvent::Left {
            plan,
            error: Some(error),
            ..
        } => eprintln!("error: run {plan:?} failed: {error}"),
        _ if mode == Mode::Quiet => {}
        WorkerEvent::Progress { .. } => {}
        WorkerEvent::Joined { plan } => eprintln!("worker: working on {plan:?}"),
        WorkerEvent::Left { plan, outcome, .. } => eprintln!("worker: {plan:?} {outcome}"),
    }
}
