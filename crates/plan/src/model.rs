//! The validated plan.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Location, Place};

/// A validated plan. Its `Debug` hides the passwords in its URLs.
#[derive(Clone, PartialEq)]
pub struct Plan {
    /// Identifies the run in the state database.
    pub name: String,
    /// The database the steps change, `${VAR}` expanded.
    pub database: String,
    /// Where progress is kept, when not in `database`.
    pub state_database: Option<String>,
    /// `[defaults]`, as given (each step's own settings are already merged).
    pub defaults: Settings,
    /// The steps in file order.
    pub steps: Vec<Step>,
    /// `[expect] max_duration`: the go/no-go threshold of `estimate`.
    pub expect_max_duration: Option<Duration>,
    /// Read replicas to watch for lag.
    pub replicas: Vec<String>,
    /// The replica lag that pauses claiming, as written; see [`Plan::replica_lag_limit`].
    pub max_replica_lag: Option<Duration>,
    /// The latency guard: pause claiming when the probe's latency grows by this factor
    /// (`max_latency_increase = "2x"` is `2.0`; always greater than 1).
    pub max_latency_increase: Option<f64>,
    /// The statement whose latency the guard measures, when not the default probe.
    pub probe_query: Option<String>,
    /// Where to post a message when the run is done, fails, or stays throttled (`notify`),
    /// `${VAR}` expanded. A webhook's address often holds its secret: never printed.
    pub notify: Vec<String>,
    /// How long the run must stay throttled before a message says so, and again after
    /// each such while (`notify_throttled_after`, default [`DEFAULT_NOTIFY_THROTTLED_AFTER`]).
    pub notify_throttled_after: Duration,
    /// The plan file.
    pub path: PathBuf,
    /// The file's exact text. It may hold a password written literally: see `written_urls`.
    pub text: String,
    /// Every database URL as written in `text`, before `${VAR}` is expanded, so that a
    /// password written literally can be found and kept out of what is stored.
    pub written_urls: Vec<WrittenUrl>,
    /// Where each top-level key (`replicas`, `max_replica_lag`, …) was written, for later
    /// errors about it.
    pub key_locations: BTreeMap<String, Location>,
    /// Where each key of `[defaults]` was written, for later errors about it.
    pub default_key_locations: BTreeMap<String, Location>,
}

/// How long a run stays throttled before `notify` says so, when the plan does not say.
pub const DEFAULT_NOTIFY_THROTTLED_AFTER: Duration = Duration::from_secs(15 * 60);

/// The replica lag that throttles a run whose plan lists `replicas` without `max_replica_lag`.
pub const DEFAULT_MAX_REPLICA_LAG: Duration = Duration::from_secs(10);

/// A database URL as written in the plan file (`database`, `[state] database`, `replicas`, a
/// step's `source`), `${VAR}` not expanded. Has no `Debug`: the text may hold a password.
#[derive(Clone, PartialEq)]
pub struct WrittenUrl {
    /// The key it is the value of.
    pub key: String,
    /// The URL as written (TOML escapes decoded), `${VAR}` left as is.
    pub text: String,
    /// The byte range of the value in the plan's text, its quotes included.
    pub span: std::ops::Range<usize>,
    /// Where the value starts.
    pub location: Location,
}

impl WrittenUrl {
    /// The text with every `${VAR}` left out: what the user wrote literally. A password found
    /// here did not come from the environment.
    pub fn literal(&self) -> String {
        let mut out = String::with_capacity(self.text.len());
        let mut rest = self.text.as_str();
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            match rest[start..].find('}') {
                Some(len) => rest = &rest[start + len + 1..],
                None => {
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// `url` with the password of `scheme://user:password@host` and of a `password=` parameter
/// replaced by `***`.
///
/// This is deliberately simple rather than a URL parser: it is only for display, and it errs
/// on the side of hiding too much, taking the last `@` so that a password holding an unescaped
/// `@` is hidden whole.
pub(crate) fn redact(url: &str) -> String {
    let mut out = match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    };
    let mut from = 0;
    while let Some(found) = out[from..].find("password=") {
        let start = from + found + "password=".len();
        let end = out[start..]
            .find(['&', '#'])
            .map_or(out.len(), |i| start + i);
        out.replace_range(start..end, "***");
        from = start + 3;
    }
    out
}

impl Plan {
    /// Where progress is kept: the `[state]` database, or else the plan's own.
    pub fn state_url(&self) -> &str {
        self.state_database.as_deref().unwrap_or(&self.database)
    }

    /// The replica lag above which the run is throttled, when it watches replicas at all:
    /// `max_replica_lag`, or [`DEFAULT_MAX_REPLICA_LAG`] when only `replicas` is written.
    /// Without `replicas` the replicas watched are those connected to the plan's database.
    pub fn replica_lag_limit(&self) -> Option<Duration> {
        match (&self.max_replica_lag, self.replicas.is_empty()) {
            (Some(limit), _) => Some(*limit),
            (None, false) => Some(DEFAULT_MAX_REPLICA_LAG),
            (None, true) => None,
        }
    }

    /// Where the top-level key `plan_key` was written in the plan file, if it was.
    pub fn place(&self, plan_key: &str) -> Option<Place<'_>> {
        let location = *self.key_locations.get(plan_key)?;
        Some(Place {
            file: &self.path,
            location,
        })
    }

    /// Where the key `plan_key` of `[defaults]` was written in the plan file, if it was.
    pub fn default_place(&self, plan_key: &str) -> Option<Place<'_>> {
        let location = *self.default_key_locations.get(plan_key)?;
        Some(Place {
            file: &self.path,
            location,
        })
    }
}

/// Leaves out `text`, which may hold a password written literally.
impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("name", &self.name)
            .field("database", &redact(&self.database))
            .field(
                "state_database",
                &self.state_database.as_deref().map(redact),
            )
            .field("defaults", &self.defaults)
            .field("steps", &self.steps)
            .field("expect_max_duration", &self.expect_max_duration)
            .field(
                "replicas",
                &self.replicas.iter().map(|r| redact(r)).collect::<Vec<_>>(),
            )
            .field("max_replica_lag", &self.max_replica_lag)
            .field("max_latency_increase", &self.max_latency_increase)
            .field("probe_query", &self.probe_query)
            .field("notify", &format_args!("{} address(es)", self.notify.len()))
            .field("notify_throttled_after", &self.notify_throttled_after)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Unique within the plan.
    pub name: String,
    /// Steps that must be done before this one starts.
    pub after: Vec<String>,
    /// `[defaults]` overridden by the step's own keys.
    pub settings: Settings,
    /// What the step does.
    pub kind: StepKind,
    /// Where the step's table starts: its `[[steps]]` header, or the `{` of an inline table.
    pub location: Location,
    /// Where each of the step's keys was written, for later errors such as "sql must use :start".
    pub key_locations: BTreeMap<String, Location>,
    /// `convert`: per column, what a transform or copy writes instead of a value the column
    /// cannot hold without loss (by default such a row fails).
    pub convert: BTreeMap<String, Convert>,
    /// `ensure`: queries that must each return true once the step's batches are done, or the
    /// step fails with what they returned.
    pub ensure: Vec<Ensure>,
}

/// One post-condition of a step: a query run on the plan's database once the step's batches
/// are done, whose first column of its first row must be true.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ensure {
    /// The query.
    pub sql: String,
    /// Where it was written (the string itself, within a list).
    pub location: Location,
}

impl Step {
    /// Where the step's key `plan_key` (`sql`, `key`, `into`, …) was written in `file`, or the
    /// step itself when that key was not written.
    pub fn place<'a>(&self, file: &'a Path, plan_key: &str) -> Place<'a> {
        Place {
            file,
            location: *self.key_locations.get(plan_key).unwrap_or(&self.location),
        }
    }
}

/// What to write instead of a value a column cannot hold without loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convert {
    /// SQL NULL (for MySQL's zero dates, a number that does not fit, text that does not parse).
    Null,
    /// Bytes that are not UTF-8 going into text: invalid sequences become U+FFFD.
    Replace,
}

/// What a step does. Its `Debug` hides the password in a copy's `source`.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    /// `sql` without `table`: runs once.
    Once {
        /// The statement(s).
        sql: String,
    },
    /// `table` + `key` + `sql`: runs once per key-range batch.
    Chunked {
        /// The table walked.
        table: String,
        /// Its unique, indexed key.
        key: String,
        /// `where`: only rows matching it are walked.
        filter: Option<String>,
        /// The batch statement, with `:start` and `:end`.
        sql: String,
    },
    /// `table` + `key` + a script: rewrites rows.
    Transform {
        /// The table.
        table: String,
        /// Its key.
        key: String,
        /// Columns read (the key is always read).
        columns: Vec<String>,
        /// `where`.
        filter: Option<String>,
        /// The transform.
        script: Script,
    },
    /// `into`: copies rows into another table, possibly from another database.
    Copy(CopySpec),
}

/// The table, key and filter a step walks in batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walked<'a> {
    /// The table walked (a copy's source table).
    pub table: &'a str,
    /// Its unique, indexed key.
    pub key: &'a str,
    /// `where`: only rows matching it are walked.
    pub filter: Option<&'a str>,
}

impl StepKind {
    /// What the step walks in batches; `None` for a one-off step.
    pub fn walked(&self) -> Option<Walked<'_>> {
        let (table, key, filter) = match self {
            StepKind::Once { .. } => return None,
            StepKind::Chunked {
                table, key, filter, ..
            }
            | StepKind::Transform {
                table, key, filter, ..
            } => (table, key, filter),
            StepKind::Copy(copy) => (&copy.table, &copy.key, &copy.filter),
        };
        Some(Walked {
            table,
            key,
            filter: filter.as_deref(),
        })
    }
}

/// A copy step: rows of a source table, possibly in another database, into a table of the
/// plan's database. Its `Debug` hides the password in `source`.
#[derive(Clone, PartialEq)]
pub struct CopySpec {
    /// The source database, when not the plan's.
    pub source: Option<String>,
    /// The source table.
    pub table: String,
    /// Its key.
    pub key: String,
    /// Columns copied; all when `None`.
    pub columns: Option<Vec<String>>,
    /// A SELECT with `:start`/`:end` replacing `columns`.
    pub query: Option<String>,
    /// `where`.
    pub filter: Option<String>,
    /// The target table in the plan's database.
    pub into: String,
    /// The target column that holds the source key, for `verify`; default: the column
    /// named like `key`.
    pub target_key: Option<String>,
    /// What to do when a row exists.
    pub on_conflict: OnConflict,
    /// An optional reshaping transform.
    pub script: Option<Script>,
}

impl fmt::Debug for CopySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CopySpec")
            .field("source", &self.source.as_deref().map(redact))
            .field("table", &self.table)
            .field("key", &self.key)
            .field("columns", &self.columns)
            .field("query", &self.query)
            .field("filter", &self.filter)
            .field("into", &self.into)
            .field("target_key", &self.target_key)
            .field("on_conflict", &self.on_conflict)
            .field("script", &self.script)
            .finish()
    }
}

/// A per-row transform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Script {
    /// Lua source, inline or read from `file`.
    Lua {
        /// The source.
        code: String,
        /// Where it was read from, for `lua_file`.
        file: Option<PathBuf>,
        /// The line of its file where the code starts (the plan file's, for inline `lua`), so
        /// that Lua's error messages name lines the user can find.
        first_line: usize,
    },
    /// A program and its arguments, fed rows as JSON lines.
    Command(Vec<String>),
}

/// What a copy does with a row whose key exists in the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnConflict {
    /// Update it.
    Update,
    /// Keep the existing row.
    Ignore,
    /// Fail.
    #[default]
    Error,
}

/// What a transform does with a row it cannot process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRowError {
    /// Fail the batch.
    #[default]
    Fail,
    /// Record the row in the dead letters and go on.
    Skip,
}

/// How a transform step keeps an application's concurrent writes to its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Locking {
    /// Read the batch's rows without locks and run the transform before the batch's
    /// transaction; write back only rows that still hold what was read, and transform again,
    /// under lock, those that changed meanwhile.
    #[default]
    Optimistic,
    /// Read the batch's rows under lock in its transaction (`FOR UPDATE`) and hold the locks
    /// while the transform runs.
    Rows,
}

/// Settings of `[defaults]`, overridable per step.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Rows per batch (where it starts, when adaptive).
    pub batch_size: u64,
    /// Attempts per batch for transient errors.
    pub max_attempts: u32,
    /// A worker silent this long loses its batches.
    pub lease: Duration,
    /// The database-side time limit of a batch's statements.
    pub batch_timeout: Duration,
    /// What a transform does with a bad row.
    pub on_row_error: OnRowError,
    /// The batch duration to adapt towards; [`DEFAULT_TARGET_BATCH_TIME`] when not written.
    pub target_batch_time: Option<Duration>,
    /// Whether the batch size adapts (on by default).
    pub adaptive: bool,
    /// The smallest adaptive batch, as written (see [`Settings::batch_size_bounds`]).
    pub min_batch_size: Option<u64>,
    /// The largest adaptive batch, as written (see [`Settings::batch_size_bounds`]).
    pub max_batch_size: Option<u64>,
    /// The most rows (keys walked) the step's batches start per second, over every worker.
    pub max_rows_per_second: Option<f64>,
    /// SQL run against the plan's database every few seconds; a true first column (or an
    /// error) pauses claiming.
    pub throttle_query: Option<String>,
    /// The longest a transform may take over one row before the batch fails.
    pub row_timeout: Duration,
    /// The most memory one Lua transform may hold, in bytes.
    pub lua_memory: u64,
    /// About the most row data a transform or copy holds at once per batch: a batch of wide
    /// rows is read and written in slices of at most this many bytes.
    pub max_batch_bytes: u64,
    /// How a transform step keeps concurrent writes, as written; see [`Settings::locking`].
    pub locking: Option<Locking>,
}

/// The batch duration that adaptive sizing aims at when `target_batch_time` is not written:
/// short enough that an application waiting on a batch's row locks waits at most about this
/// long, long enough that claims and commits cost little beside the batch's work (a 2M-row
/// backfill ran as fast as with 500 ms, with a far lower p99 for an application beside it;
/// bench/RESULTS.md). A batch whose fixed cost (a statement's own overhead) is more than half
/// of it lasts twice that cost instead (the sizer in `crates/sched/src/pace/size.rs`).
pub const DEFAULT_TARGET_BATCH_TIME: Duration = Duration::from_millis(100);

/// The smallest adaptive batch when `min_batch_size` is not written.
pub const DEFAULT_MIN_BATCH_SIZE: u64 = 10;

/// The largest adaptive batch when `max_batch_size` is not written: a bound on the keys one
/// walk reads and on one batch's locks whatever the rows cost.
pub const DEFAULT_MAX_BATCH_SIZE: u64 = 100_000;

impl Settings {
    /// The batch duration adaptive sizing aims at.
    pub fn target_batch_time(&self) -> Duration {
        self.target_batch_time.unwrap_or(DEFAULT_TARGET_BATCH_TIME)
    }

    /// The smallest and largest batch sizes. A bound that is written is kept; one that is not
    /// stretches to take in `batch_size`, so a plan that only writes a large `batch_size`
    /// starts there.
    pub fn batch_size_bounds(&self) -> (u64, u64) {
        if !self.adaptive {
            return (self.batch_size, self.batch_size);
        }
        let lo = self
            .min_batch_size
            .unwrap_or(DEFAULT_MIN_BATCH_SIZE.min(self.batch_size))
            .max(1);
        let hi = self
            .max_batch_size
            .unwrap_or(DEFAULT_MAX_BATCH_SIZE.max(self.batch_size))
            .max(lo);
        (lo, hi)
    }

    /// How a transform step keeps concurrent writes: `locking`, optimistic when not written.
    pub fn locking(&self) -> Locking {
        self.locking.unwrap_or_default()
    }

    /// The size of a step's first batch: `batch_size`, within the bounds.
    pub fn first_batch_size(&self) -> u64 {
        let (lo, hi) = self.batch_size_bounds();
        self.batch_size.clamp(lo, hi)
    }
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            batch_size: 1000,
            max_attempts: 5,
            lease: Duration::from_secs(30),
            batch_timeout: Duration::from_secs(600),
            on_row_error: OnRowError::Fail,
            target_batch_time: None,
            adaptive: true,
            min_batch_size: None,
            max_batch_size: None,
            max_rows_per_second: None,
            throttle_query: None,
            row_timeout: Duration::from_secs(5),
            lua_memory: 64 << 20,
            max_batch_bytes: 16 << 20,
            locking: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_of_a_copy_hides_its_source_password() {
        let kind = StepKind::Copy(CopySpec {
            source: Some("mysql://root:hunter2@db/shop".into()),
            table: "orders".into(),
            key: "id".into(),
            columns: None,
            query: None,
            filter: None,
            into: "orders_history".into(),
            target_key: None,
            on_conflict: OnConflict::Error,
            script: None,
        });
        let debug = format!("{kind:?}");
        assert!(debug.contains("mysql://root:***@db/shop"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn redact_hides_passwords() {
        assert_eq!(
            redact("postgres://app:s3cret@db/x"),
            "postgres://app:***@db/x"
        );
        assert_eq!(redact("mysql://root@db/x"), "mysql://root@db/x");
        assert_eq!(redact("sqlite://a.db"), "sqlite://a.db");
        assert_eq!(
            redact("postgres://app:p@ss:w@db/x"),
            "postgres://app:***@db/x"
        );
        assert_eq!(
            redact("postgres://db/x?user=a&password=s3cret&sslmode=require"),
            "postgres://db/x?user=a&password=***&sslmode=require"
        );
        assert_eq!(
            redact("mysql://db/x?password=s"),
            "mysql://db/x?password=***"
        );
    }
}
