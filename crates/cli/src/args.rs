//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Run large data migrations that finish: chunked by key, parallel, resumable after any crash.
#[derive(Debug, Parser)]
#[command(name = "godwit", version, about, long_about = None)]
pub(crate) struct Args {
    #[command(subcommand)]
    pub(crate) command: Command,
    /// How lines on stderr are written: `text` for people, or `json`, one JSON object per
    /// line (with `level` and `message`) for a log collector.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
}

/// How lines on stderr are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Lines for people.
    Text,
    /// One JSON object per line.
    Json,
}

impl Args {
    pub(crate) fn quiet(&self) -> bool {
        match &self.command {
            Command::Run(run) => run.work.quiet,
            Command::Worker(worker) => worker.work.quiet,
            _ => false,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Execute the plan until every step is done; running it again resumes.
    Run(RunArgs),
    /// Show the progress of the plan's run (works while it runs, from anywhere).
    Status(StatusArgs),
    /// Validate the plan against its databases without changing data.
    Check(CheckArgs),
    /// Build a SQLite demo database of old Vietnamese phone numbers and migrate it.
    Demo(DemoArgs),
    /// Store the plan's run in its state database for workers, without working on it.
    Submit(PlanArgs),
    /// Work on every unfinished run stored in a state database (no plan file needed).
    Worker(WorkerArgs),
    /// Stop claiming new batches in the plan's run, in every process; batches in flight finish.
    Pause(TargetArgs),
    /// Claim batches again after `pause`.
    Resume(TargetArgs),
    /// Stop the plan's run for good, in every process; batches in flight finish.
    Cancel(TargetArgs),
    /// Re-queue the failed batches of the plan's run, for the processes working on it.
    Retry(TargetArgs),
    /// Change the settings of the plan's run for every worker on it, without restarting it;
    /// workers pick them up within a second.
    Set(SetArgs),
    /// Wait until the plan's run is done (exit 0), failed or cancelled (exit 1), or the
    /// timeout passes (exit 75).
    Wait(WaitArgs),
    /// Compare every copy step's source with its target, key range by key range; exit 1 when
    /// any range differs.
    Verify(VerifyArgs),
    /// List the rows the plan's transforms skipped (`on_row_error = "skip"`), with their errors.
    DeadLetters(DeadLettersArgs),
    /// Serve the web dashboard and its JSON API over a state database (read-only unless
    /// given --token-file).
    Serve(ServeArgs),
    /// Describe the durations of the plan's run for release notes: per step its start, end,
    /// rows, rate, batches, retries, skipped rows, longest batch, workers, and the estimate
    /// made beforehand (Markdown, JSON, or one self-contained HTML page).
    Report(ReportArgs),
    /// Project the plan's duration from a sample of its batches, each rehearsed in a
    /// transaction that is rolled back (changes no data); with a threshold, a go/no-go
    /// (exit 3 for no-go).
    Estimate(EstimateArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct EstimateArgs {
    /// The plan file (TOML).
    pub(crate) plan: PathBuf,
    /// Batches to rehearse per step, spread over its key range.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub(crate) sample: u64,
    /// The longest the run may take: over it the verdict is no-go (exit 3). Overrides the
    /// plan's `[expect] max_duration`.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) threshold: Option<Duration>,
    /// Batches in flight, as the run will have them (default: the run's default).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub(crate) concurrency: Option<u64>,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    /// Do not keep the estimate in the state database (where `godwit report` shows it
    /// beside the run's actual durations).
    #[arg(long)]
    pub(crate) no_record: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReportArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// `md`: a table to paste into release notes; `json`: one object; `html`: one page with
    /// charts that fetches nothing.
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    pub(crate) format: ReportFormat,
    /// Write the report to FILE instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
}

/// The forms of `godwit report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ReportFormat {
    /// Markdown.
    #[value(alias = "markdown")]
    Md,
    /// JSON.
    Json,
    /// One HTML page.
    Html,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The state database holding the runs (`godwit_*` tables); also read from GODWIT_DATABASE.
    #[arg(long, env = "GODWIT_DATABASE", hide_env_values = true)]
    pub(crate) database: String,
    /// The address to listen on; loopback unless told otherwise.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) listen: std::net::SocketAddr,
    /// A file holding the token that pause, resume, cancel and retry must carry
    /// (`Authorization: Bearer TOKEN`); without it the dashboard is read-only.
    #[arg(long)]
    pub(crate) token_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct VerifyArgs {
    /// The plan file (TOML).
    pub(crate) plan: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DeadLettersArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Only this step's rows.
    #[arg(long)]
    pub(crate) step: Option<String>,
    /// At most this many rows.
    #[arg(long)]
    pub(crate) limit: Option<u64>,
    /// Print one JSON object per row (JSON lines).
    #[arg(long)]
    pub(crate) json: bool,
}

/// Which run: a plan file, or a state database and a run name (where there is no plan file,
/// as in a worker's pod).
#[derive(Debug, clap::Args)]
pub(crate) struct TargetArgs {
    /// The plan file (TOML).
    #[arg(required_unless_present = "run")]
    pub(crate) plan: Option<PathBuf>,
    /// The state database holding the run, instead of a plan file (with --run).
    #[arg(long, requires = "run", conflicts_with = "plan")]
    pub(crate) database: Option<String>,
    /// The run's name (the plan's `name`), instead of a plan file (with --database).
    #[arg(long, requires = "database", conflicts_with = "plan")]
    pub(crate) run: Option<String>,
}

#[derive(Debug, clap::Args)]
#[command(group(
    clap::ArgGroup::new("settings")
        .required(true)
        .multiple(true)
        .args(["concurrency", "batch_size", "max_rows_per_second"])
))]
pub(crate) struct SetArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Batches in flight in each worker process on the run.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub(crate) concurrency: Option<u64>,
    /// Rows per batch for every chunked step, fixed: adaptive sizing stops for the run.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) batch_size: Option<u64>,
    /// The run's limit on rows per second over all its workers; a decimal number (0.5, 2000).
    #[arg(long, value_name = "N", value_parser = parse_rate)]
    pub(crate) max_rows_per_second: Option<f64>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct WaitArgs {
    #[command(flatten)]
    pub(crate) target: TargetArgs,
    /// Give up after this long (e.g. 90s, 30m, 2h) and exit 75; without it, wait as long as
    /// the run takes.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub(crate) timeout: Option<Duration>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PlanArgs {
    /// The plan file (TOML).
    pub(crate) plan: PathBuf,
}

#[derive(Debug, clap::Args)]
#[command(
    mut_arg("grace", |a| a.help("On SIGTERM or SIGINT, how long batches in flight may take to finish before they are rolled back; then the worker releases its claims and exits 75")),
    mut_arg("json", |a| a.help("Print one JSON event per line on stdout")),
)]
pub(crate) struct WorkerArgs {
    /// The state database holding the runs (`godwit_*` tables); also read from GODWIT_DATABASE.
    #[arg(long, env = "GODWIT_DATABASE", hide_env_values = true)]
    pub(crate) database: String,
    /// Batches in flight in this worker, over all the runs it works on.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) concurrency: u32,
    /// Exit 0 when no run is left to work on, instead of waiting for new ones.
    #[arg(long)]
    pub(crate) exit_when_idle: bool,
    #[command(flatten)]
    pub(crate) work: WorkArgs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunArgs {
    /// The plan file (TOML).
    pub(crate) plan: PathBuf,
    /// Batches in flight in this process [default: 4 on servers, 2 on SQLite].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) concurrency: Option<u32>,
    /// Stop claiming batches after this long (e.g. 25s, 10m), finish those in flight, exit 75.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) max_duration: Option<Duration>,
    /// Forget the stored progress of this plan's run and start over (changed rows stay changed).
    #[arg(long)]
    pub(crate) restart: bool,
    /// Rehearse: run every batch of every step in a transaction that is rolled back, and print
    /// what would change; writes no data and no progress (see docs/operations.md).
    #[arg(long)]
    pub(crate) dry_run: bool,
    #[command(flatten)]
    pub(crate) work: WorkArgs,
}

/// What `run` and `worker` share as processes that work on batches: how long batches in
/// flight get after a signal, and what is printed. The help is `run`'s; `worker` words
/// `--grace` and `--json` its own way.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkArgs {
    /// After SIGTERM or SIGINT, how long batches in flight may take to finish before they are
    /// rolled back (a second signal rolls them back at once).
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    pub(crate) grace: Duration,
    /// Print one JSON event per line on stdout instead of progress bars.
    #[arg(long, conflicts_with = "quiet")]
    pub(crate) json: bool,
    /// Print only errors.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Serve Prometheus metrics of this process at http://ADDR/metrics while it works
    /// (ADDR: HOST:PORT, such as 127.0.0.1:9478 or 0.0.0.0:9478).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// The plan file (TOML).
    #[arg(required_unless_present = "database")]
    pub(crate) plan: Option<PathBuf>,
    /// The state database to read instead of a plan's: every run stored there, or the one
    /// named by --run.
    #[arg(long, conflicts_with = "plan")]
    pub(crate) database: Option<String>,
    /// With --database: only this run (the plan's `name`).
    #[arg(long, requires = "database")]
    pub(crate) run: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// The plan file (TOML).
    pub(crate) plan: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    /// Exit 1 when any finding has severity `warning`.
    #[arg(long)]
    pub(crate) deny_warnings: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Customers to generate.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) rows: u64,
    /// Where to put demo.db.
    #[arg(long, default_value = "godwit-demo")]
    pub(crate) dir: PathBuf,
    /// Batches in flight.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) concurrency: Option<u32>,
    /// Print one JSON event per line on stdout instead of progress bars.
    #[arg(long)]
    pub(crate) json: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    godwit::plan::parse_duration(text)
}

/// A rate: a finite number above 0, decimals allowed.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate; expected a number above 0, such as 500 or 0.5"
        )),
    }
}
