//! Transforms written as a program in any language, fed rows as JSON lines.
//!
//! The program is started once and kept for the next batch: godwit writes one JSON object per
//! row to its stdin and reads one JSON line per row from its stdout, with the Lua function's
//! meaning (`null` leaves the row, an object holds columns, a list of objects fans out, an
//! object with the single key `error` marks a bad row). Bytes travel as base64 text. A program
//! that exits, stops answering for `row_timeout`, or writes something that is not such a line
//! fails the batch with the end of its stderr; it is killed and a new one starts for the retry.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use godwit_driver::{Error, ErrorKind, Value};
use serde_json::Value as Json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::json::{decode_bytes, from_json, row_line};
use crate::lua::key_text;
use crate::{Limits, Outcome, Rows};

/// How much of a program's stderr is kept for the message when it fails.
const STDERR_TAIL: usize = 4096;

/// Running programs for one step, one per batch in flight.
pub struct CommandPool {
    argv: Vec<String>,
    dir: PathBuf,
    limits: Limits,
    idle: Mutex<Vec<Program>>,
}

impl CommandPool {
    /// A pool that starts `argv` in `dir` when a batch needs a program.
    pub fn new(argv: Vec<String>, dir: PathBuf, limits: Limits) -> CommandPool {
        CommandPool {
            argv,
            dir,
            limits,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// The command line, for messages.
    fn shown(&self) -> String {
        self.argv.join(" ")
    }

    fn start(&self) -> Result<Program, Error> {
        let Some((program, args)) = self.argv.split_first() else {
            return Err(Error::permanent(
                "the transform's `command` names no program",
            ));
        };
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .current_dir(&self.dir)
            // Its own process group, so that a program started through a wrapper (`sh -c`,
            // `uv run`, `npx`) is killed with the wrapper.
            .process_group(0)
            // Python buffers a pipe's output in blocks; each answer must leave at once.
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                Error::permanent(format!(
                    "cannot start the transform program `{}` in {}: {e}",
                    self.shown(),
                    self.dir.display()
                ))
            })?;
        let missing = || Error::permanent("the transform program's pipes are missing");
        let stdin = child.stdin.take().ok_or_else(missing)?;
        let stdout = BufReader::new(child.stdout.take().ok_or_else(missing)?);
        let mut stderr = child.stderr.take().ok_or_else(missing)?;
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL)));
        let stderr_done = {
            let tail = tail.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n @ 1..) = stderr.read(&mut buf).await {
                    if let Ok(mut tail) = tail.lock() {
                        tail.extend(&buf[..n]);
                        let excess = tail.len().saturating_sub(STDERR_TAIL);
                        tail.drain(..excess);
                    }
                }
            })
        };
        Ok(Program {
            child,
            stdin: Some(stdin),
            stdout,
            tail,
            stderr_done,
        })
    }

    pub(crate) async fn apply(&self, rows: Rows) -> Result<Vec<Outcome>, Error> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let mut program = match idle {
            Some(p) => p,
            None => self.start()?,
        };
        match program
            .exchange(&rows, self.limits.row_timeout, self.limits.max_line_bytes)
            .await
        {
            Ok(outcomes) => {
                if let Ok(mut idle) = self.idle.lock() {
                    idle.push(program);
                }
                Ok(outcomes)
            }
            Err(Problem {
                kind,
                text: problem,
            }) => {
                let stderr = program.stop().await;
                let stderr = if stderr.trim().is_empty() {
                    "its stderr was empty".to_string()
                } else {
                    format!("its stderr ends with:\n{}", stderr.trim_end())
                };
                // Mostly transient: the retry starts a new program, as a crash may not repeat.
                Err(Error::new(
                    kind,
                    None,
                    format!(
                        "the transform program `{}` {problem}; {stderr}",
                        self.shown()
                    ),
                ))
            }
        }
    }
}

/// One running program.
struct Program {
    child: Child,
    /// Lent to the writer task during a batch.
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    tail: Arc<Mutex<VecDeque<u8>>>,
    stderr_done: tokio::task::JoinHandle<()>,
}

impl Program {
    /// Writes the rows and reads one answer per row; `Err` says what went wrong.
    async fn exchange(
        &mut self,
        rows: &Rows,
        timeout: Duration,
        max_line_bytes: u64,
    ) -> Result<Vec<Outcome>, Problem> {
        let (input, input_lens) = input_lines(rows);
        let mut stdin = self
            .stdin
            .take()
            .ok_or("lost its stdin in an earlier batch")?;
        // Written by another task while answers are read: a program may answer before it has
        // read everything, and neither side may wait on a full pipe.
        let writer = tokio::spawn(async move {
            let written = stdin.write_all(input.as_bytes()).await;
            let flushed = stdin.flush().await;
            written.and(flushed).map(|()| stdin)
        });
        let answers = self
            .read_answers(rows, &input_lens, timeout, max_line_bytes)
            .await;
        let out = match answers {
            Ok(out) => out,
            Err(failure) => {
                // Nothing more goes to a program that failed, before its end is looked at.
                writer.abort();
                return Err(self.explain(failure).await);
            }
        };
        match writer.await {
            Ok(Ok(stdin)) => self.stdin = Some(stdin),
            Ok(Err(e)) => return Err(Problem::from(format!("stopped reading its stdin ({e})"))),
            Err(e) => return Err(Problem::from(format!("could not be written to ({e})"))),
        }
        self.refuse_extra_output()?;
        Ok(out)
    }

    /// Reads one answer line per row and makes it an outcome.
    async fn read_answers(
        &mut self,
        rows: &Rows,
        input_lens: &[u64],
        timeout: Duration,
        max_line_bytes: u64,
    ) -> Result<Vec<Outcome>, Failure> {
        let mut out = Vec::with_capacity(rows.rows.len());
        let mut line = Vec::new();
        for (i, values) in rows.rows.iter().enumerate() {
            line.clear();
            // A row wider than the budget (a slice holds at least one row) may come back as
            // wide: twice its own line is allowed too.
            let limit = max_line_bytes.max(input_lens.get(i).map_or(0, |n| n.saturating_mul(2)));
            let answered = format!("after answering {i} of {} rows", rows.rows.len());
            self.read_line(&mut line, limit, timeout)
                .await
                .map_err(|failure| failure.with_context(values, &answered, timeout))?;
            if line.len() as u64 > limit && line.last() != Some(&b'\n') {
                return Err(Problem::permanent(format!(
                    "answered the row with key {} with a line longer than {limit} bytes (max_batch_bytes, or twice the row's own line), {answered}; it was not read further",
                    key_text(values)
                ))
                .into());
            }
            let Ok(line) = std::str::from_utf8(&line) else {
                return Err(Problem::from(format!(
                    "answered the row with key {} with a line that is not UTF-8, {answered}",
                    key_text(values)
                ))
                .into());
            };
            match answer(&rows.columns, values, &rows.bytes_columns, line.trim_end()) {
                Ok(outcome) => out.push(crate::keep_json_scalars(&rows.columns, values, outcome)),
                Err(problem) => {
                    return Err(Problem::from(format!(
                        "{problem} for the row with key {}, {answered}",
                        key_text(values)
                    ))
                    .into())
                }
            }
        }
        Ok(out)
    }

    /// Reads one line into `line`, at most `limit` bytes and one more.
    async fn read_line(
        &mut self,
        line: &mut Vec<u8>,
        limit: u64,
        timeout: Duration,
    ) -> Result<(), ReadFailure> {
        // One byte past the limit tells an over-long line from one that just fits; reading
        // stops there, whatever the program goes on writing.
        let mut bounded = (&mut self.stdout).take(limit.saturating_add(1));
        match tokio::time::timeout(timeout, bounded.read_until(b'\n', line)).await {
            Err(_) => Err(ReadFailure::TimedOut),
            Ok(Err(e)) => Err(ReadFailure::Io(e)),
            Ok(Ok(0)) => Err(ReadFailure::Closed),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// The problem a failure stands for; for a closed stdout, how the program ended.
    async fn explain(&mut self, failure: Failure) -> Problem {
        match failure {
            Failure::Problem(problem) => problem,
            Failure::Closed { answered } => {
                let status = tokio::time::timeout(Duration::from_secs(1), self.child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map_or("closed its stdout".to_string(), |s| format!("exited ({s})"));
                Problem::from(format!("{status} {answered}"))
            }
        }
    }

    /// More output than rows means the answers are out of step with the rows (a stray
    /// print); caught here when it arrived in time.
    fn refuse_extra_output(&self) -> Result<(), Problem> {
        if self.stdout.buffer().is_empty() {
            return Ok(());
        }
        let extra: String = String::from_utf8_lossy(self.stdout.buffer())
            .chars()
            .take(200)
            .collect();
        Err(Problem::from(format!(
            "wrote more lines than it was given rows (extra: {extra:?}); answer exactly one line per row"
        )))
    }

    /// Kills the program's process group (a wrapper's children too).
    fn kill_group(&mut self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            // SAFETY: kill(2) with a negative pid signals that process group; it touches no
            // memory of ours. The group is the child's own (`process_group(0)`).
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.start_kill();
    }

    /// Kills the program and returns the end of its stderr.
    async fn stop(mut self) -> String {
        self.kill_group();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
        // The pipe closes with the program; give the reader a moment to take the last bytes.
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.stderr_done).await;
        let tail = self.tail.lock().map(|t| t.clone()).unwrap_or_default();
        String::from_utf8_lossy(&Vec::from(tail)).into_owned()
    }
}

/// A program left behind (its pool dropped, its batch abandoned) goes with its whole group.
impl Drop for Program {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// The rows as JSON lines, and the length of each row's line.
fn input_lines(rows: &Rows) -> (String, Vec<u64>) {
    let mut input = String::new();
    let mut input_lens = Vec::with_capacity(rows.rows.len());
    for values in &rows.rows {
        let before = input.len();
        input.push_str(&row_line(&rows.columns, values));
        input.push('\n');
        input_lens.push((input.len() - before) as u64);
    }
    (input, input_lens)
}

/// Why an answer line could not be read.
enum ReadFailure {
    TimedOut,
    Io(std::io::Error),
    /// The program closed its stdout: it may have exited.
    Closed,
}

impl ReadFailure {
    /// Names the row and how far the batch came.
    fn with_context(self, values: &[Value], answered: &str, timeout: Duration) -> Failure {
        match self {
            ReadFailure::TimedOut => Problem::from(format!(
                "did not answer the row with key {} within row_timeout ({timeout:?}), {answered}; it was killed",
                key_text(values)
            ))
            .into(),
            ReadFailure::Io(e) => {
                Problem::from(format!("could not be read from ({e}), {answered}")).into()
            }
            ReadFailure::Closed => Failure::Closed {
                answered: answered.to_string(),
            },
        }
    }
}

/// Why reading the answers stopped: a problem, or a closed stdout whose cause is asked of the
/// program once the writer has stopped ([`Program::explain`]).
enum Failure {
    Problem(Problem),
    Closed { answered: String },
}

impl From<Problem> for Failure {
    fn from(problem: Problem) -> Failure {
        Failure::Problem(problem)
    }
}

/// What went wrong with a program, and whether a new program may do better.
struct Problem {
    kind: ErrorKind,
    text: String,
}

impl Problem {
    /// A fault a new program would repeat (its answer for these rows is too long).
    fn permanent(text: String) -> Problem {
        Problem {
            kind: ErrorKind::Permanent,
            text,
        }
    }
}

impl From<String> for Problem {
    fn from(text: String) -> Problem {
        Problem {
            kind: ErrorKind::Transient,
            text,
        }
    }
}

impl From<&str> for Problem {
    fn from(text: &str) -> Problem {
        Problem::from(text.to_string())
    }
}

/// Reads one answer line.
fn answer(
    columns: &[String],
    values: &[Value],
    bytes_columns: &[String],
    line: &str,
) -> Result<Outcome, String> {
    let json: Json = serde_json::from_str(line).map_err(|e| {
        let shown: String = line.chars().take(200).collect();
        format!("answered {shown:?}, which is not a JSON line ({e})")
    })?;
    Ok(match json {
        Json::Null => Outcome::Keep,
        Json::Object(map) if map.len() == 1 && map.contains_key("error") => {
            Outcome::Error(match &map["error"] {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            })
        }
        Json::Object(map) => match object_row(columns, values, bytes_columns, map) {
            Ok(row) => Outcome::Row(row),
            Err(e) => Outcome::Error(e),
        },
        Json::Array(items) => {
            let mut rows = Vec::with_capacity(items.len());
            for item in items {
                let Json::Object(map) = item else {
                    return Ok(Outcome::Error(
                        "the program answered a list whose items are not all objects".into(),
                    ));
                };
                match object_row(columns, values, bytes_columns, map) {
                    Ok(row) => rows.push(row),
                    Err(e) => return Ok(Outcome::Error(e)),
                }
            }
            Outcome::Rows(rows)
        }
        other => {
            return Err(format!(
                "answered {other}; expected an object of columns, null, a list of objects or {{\"error\": …}}"
            ))
        }
    })
}

/// An answer's columns in name order; a column that arrived as bytes (base64) goes back as
/// bytes.
fn object_row(
    columns: &[String],
    values: &[Value],
    bytes_columns: &[String],
    map: serde_json::Map<String, Json>,
) -> Result<Vec<(String, Value)>, String> {
    let mut row = Vec::with_capacity(map.len());
    for (name, json) in map {
        let was_bytes = bytes_columns.iter().any(|c| c.eq_ignore_ascii_case(&name))
            || columns
                .iter()
                .position(|c| *c == name)
                .is_some_and(|i| matches!(values.get(i), Some(Value::Bytes(_))));
        let value = match json {
            Json::String(text) if was_bytes => Value::Bytes(
                decode_bytes(&text)
                    .ok_or_else(|| format!("column {name} holds bytes: write them as base64"))?,
            ),
            json => from_json(json),
        };
        row.push((name, value));
    }
    Ok(row)
}
