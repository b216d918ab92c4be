//! `godwit check`: is the plan runnable as written, against the real databases, without
//! changing any data?
//!
//! A *problem* makes the plan invalid (exit 2). A *finding* is advice about speed or safety and
//! leaves the plan valid.

use godwit_driver::{
    quote_ident, references_param, rewrite_params, Conn, ConnectOptions, DbUrl, Value,
};
use godwit_plan::{Plan, Step, StepKind};
use serde::Serialize;

/// What `check` found: the object `godwit check --json` prints.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckReport {
    /// The plan's name.
    pub plan: String,
    /// Whether the plan can run (no problems).
    pub valid: bool,
    /// What must be fixed before the plan can run.
    pub problems: Vec<Problem>,
    /// Advice that does not make the plan invalid.
    pub findings: Vec<Finding>,
}

/// Something that makes the plan invalid.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Problem {
    /// The step concerned, if one.
    pub step: Option<String>,
    /// A stable code for machines (`missing-index-key`, `missing-table`, …).
    pub code: Option<String>,
    /// What is wrong, with file, line and column where known.
    pub message: String,
    /// A statement or change that would fix it.
    pub fix: Option<String>,
}

/// Advice about speed or safety.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    /// The step concerned.
    pub step: String,
    /// A stable code for machines.
    pub code: String,
    /// `warning` or `info`.
    pub severity: String,
    /// What was found.
    pub message: String,
    /// What the database said that shows it, if anything.
    pub evidence: Option<String>,
    /// How to fix it.
    pub fix: Option<String>,
}

impl CheckReport {
    fn new(plan: &str) -> CheckReport {
        CheckReport {
            plan: plan.to_string(),
            valid: true,
            problems: Vec::new(),
            findings: Vec::new(),
        }
    }

    /// A report for a plan file that did not parse: every error is a problem.
    pub fn from_plan_errors(plan: &str, errors: &godwit_plan::PlanErrors) -> CheckReport {
        let mut report = CheckReport::new(plan);
        for e in &errors.0 {
            report.problem(None, None, e.to_string(), None);
        }
        report
    }

    fn problem(
        &mut self,
        step: Option<&str>,
        code: Option<&str>,
        message: String,
        fix: Option<String>,
    ) {
        self.valid = false;
        self.problems.push(Problem {
            step: step.map(str::to_string),
            code: code.map(str::to_string),
            message,
            fix,
        });
    }
}

/// Checks `plan` against its databases: they answer, every table and key column exists, each
/// key has a unique index, chunked SQL uses `:start` and `:end` and prepares. Changes nothing:
/// the one statement it tries runs on an empty key range inside a transaction it rolls back.
pub async fn check(plan: &Plan) -> CheckReport {
    let mut report = CheckReport::new(&plan.name);
    let url = DbUrl::new(plan.database.clone());
    let mut conn = match godwit_db::connect(&url, &ConnectOptions::default()).await {
        Ok(c) => c,
        Err(e) => {
            report.problem(
                None,
                Some("unreachable-database"),
                format!("{}: database: {e}", plan.path.display()),
                None,
            );
            return report;
        }
    };
    if let Some(state) = &plan.state_database {
        if let Err(e) =
            godwit_db::connect(&DbUrl::new(state.clone()), &ConnectOptions::default()).await
        {
            report.problem(
                None,
                Some("unreachable-database"),
                format!("{}: [state] database: {e}", plan.path.display()),
                None,
            );
        }
    }
    for step in &plan.steps {
        check_step(&mut report, plan, step, conn.as_mut()).await;
    }
    report
}

fn at(plan: &Plan, step: &Step, key: &str) -> String {
    let loc = step.key_locations.get(key).unwrap_or(&step.location);
    format!("{}:{}:{}", plan.path.display(), loc.line, loc.column)
}

async fn check_step(report: &mut CheckReport, plan: &Plan, step: &Step, conn: &mut dyn Conn) {
    let dialect = conn.dialect();
    let name = step.name.as_str();
    match &step.kind {
        StepKind::Once { sql } => {
            if godwit_sched::needs_autocommit(sql, dialect) {
                report.findings.push(Finding {
                    step: name.to_string(),
                    code: "non-transactional".into(),
                    severity: "warning".into(),
                    message: "this statement cannot run atomically with its progress record (the database refuses it inside a transaction, or commits it on its own): a crash right after it runs it again, so make it idempotent (IF NOT EXISTS / IF EXISTS)".into(),
                    evidence: None,
                    fix: None,
                });
            }
        }
        StepKind::Chunked {
            table,
            key,
            filter,
            sql,
        } => {
            for param in ["start", "end"] {
                if !references_param(sql, dialect, param) {
                    report.problem(
                        Some(name),
                        Some("missing-range-parameter"),
                        format!(
                            "{}: step {name:?}: a chunked step's sql must use :{param} (the batch's {} key), or every batch would touch every row",
                            at(plan, step, "sql"),
                            if param == "start" { "first" } else { "last" }
                        ),
                        None,
                    );
                }
            }
            if !key_ok(report, plan, step, conn, table, key).await {
                return;
            }
            if let Err((plan_key, message)) =
                try_batch(conn, table, key, filter.as_deref(), sql).await
            {
                report.problem(
                    Some(name),
                    Some("invalid-sql"),
                    format!("{}: step {name:?}: {message}", at(plan, step, plan_key)),
                    None,
                );
            }
        }
        StepKind::Transform {
            table,
            key,
            columns,
            filter,
            script,
        } => {
            script_ok(report, plan, step, script);
            if key_ok(report, plan, step, conn, table, key).await {
                rows_ok(
                    report,
                    plan,
                    step,
                    conn,
                    table,
                    key,
                    columns,
                    filter.as_deref(),
                )
                .await;
            }
        }
        StepKind::Copy {
            source,
            table,
            key,
            columns,
            filter,
            into,
            script,
            ..
        } => {
            if let Some(script) = script {
                script_ok(report, plan, step, script);
            }
            let created_before = godwit_plan::runs_after_one_off(plan, step);
            let target_info = conn.table_info(into).await.ok().flatten();
            if !created_before && target_info.is_none() {
                report.problem(
                    Some(name),
                    Some("missing-table"),
                    format!(
                        "{}: step {name:?}: the target table {into} does not exist in the plan's database",
                        at(plan, step, "into")
                    ),
                    None,
                );
            }
            let mut own;
            let source_conn: &mut dyn Conn = match source {
                Some(url) => {
                    let url = DbUrl::new(url.clone());
                    match godwit_db::connect(&url, &ConnectOptions::default()).await {
                        Ok(c) => {
                            own = c;
                            own.as_mut()
                        }
                        Err(e) => {
                            report.problem(
                                Some(name),
                                None,
                                format!(
                                    "{}: step {name:?}: cannot connect to the source {url}: {e}",
                                    at(plan, step, "source")
                                ),
                                None,
                            );
                            return;
                        }
                    }
                }
                None => conn,
            };
            if key_ok(report, plan, step, source_conn, table, key).await {
                let named = columns.clone().unwrap_or_default();
                rows_ok(
                    report,
                    plan,
                    step,
                    source_conn,
                    table,
                    key,
                    &named,
                    filter.as_deref(),
                )
                .await;
                // Rows copied as they are must find every column in the target. (A source
                // that cannot be described was reported with its key.)
                if let Some(target) = &target_info {
                    let lacking = godwit_sched::columns_target_lacks(source_conn, step, target)
                        .await
                        .unwrap_or_default();
                    for column in lacking {
                        report.problem(
                            Some(name),
                            Some("missing-target-column"),
                            format!(
                                "{}: step {name:?}: the target table {into} has no column {column} to copy into",
                                at(plan, step, "into")
                            ),
                            None,
                        );
                    }
                }
            }
        }
    }
}

/// Whether `program` can be started from `dir`: a path (relative to `dir`) to a file, or a
/// name found on `PATH`.
fn program_exists(program: &str, dir: &std::path::Path) -> bool {
    if program.contains('/') {
        return dir.join(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

/// Reports a transform that does not compile, or a program that is not there.
fn script_ok(report: &mut CheckReport, plan: &Plan, step: &Step, script: &godwit_plan::Script) {
    if let godwit_plan::Script::Command(argv) = script {
        let dir = match plan.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        if let Some(program) = argv.first().filter(|p| !program_exists(p, &dir)) {
            report.problem(
                Some(&step.name),
                Some("invalid-transform"),
                format!(
                    "{}: step {:?}: the program {program:?} is neither a file relative to {} nor on PATH",
                    at(plan, step, "command"),
                    step.name,
                    dir.display()
                ),
                None,
            );
        }
    }
    if let Err(e) = godwit_sched::build_transform(script, &step.settings, &plan.path) {
        let plan_key = match script {
            godwit_plan::Script::Lua { file: Some(_), .. } => "lua_file",
            godwit_plan::Script::Lua { .. } => "lua",
            godwit_plan::Script::Command(_) => "command",
        };
        report.problem(
            Some(&step.name),
            Some("invalid-transform"),
            format!("{}: step {:?}: {e}", at(plan, step, plan_key), step.name),
            None,
        );
    }
}

/// Reports a table or key that cannot be walked; `false` when it was reported.
async fn key_ok(
    report: &mut CheckReport,
    plan: &Plan,
    step: &Step,
    conn: &mut dyn Conn,
    table: &str,
    key: &str,
) -> bool {
    let name = step.name.as_str();
    match godwit_sched::key_problem(conn, table, key).await {
        Ok(None) => true,
        Ok(Some(p)) => {
            report.problem(
                Some(name),
                Some(p.code),
                format!(
                    "{}: step {name:?}: {}",
                    at(plan, step, p.plan_key),
                    p.message
                ),
                p.fix,
            );
            false
        }
        Err(e) => {
            report.problem(
                Some(name),
                None,
                format!(
                    "{}: step {name:?}: cannot inspect table {table}: {e}",
                    at(plan, step, "table")
                ),
                None,
            );
            false
        }
    }
}

/// Reports `columns` the table lacks and a `where` the database refuses.
#[allow(clippy::too_many_arguments)]
async fn rows_ok(
    report: &mut CheckReport,
    plan: &Plan,
    step: &Step,
    conn: &mut dyn Conn,
    table: &str,
    key: &str,
    columns: &[String],
    filter: Option<&str>,
) {
    let name = step.name.as_str();
    if let Ok(Some(info)) = conn.table_info(table).await {
        for column in columns.iter().filter(|c| info.column(c).is_none()) {
            report.problem(
                Some(name),
                Some("missing-column"),
                format!(
                    "{}: step {name:?}: table {table} has no column {column}",
                    at(plan, step, "columns")
                ),
                None,
            );
        }
    }
    if let Some(filter) = filter {
        let dialect = conn.dialect();
        let probe = format!(
            "SELECT {k} FROM {t} WHERE ({filter}) ORDER BY {k} LIMIT 1",
            k = quote_ident(dialect, key),
            t = quote_ident(dialect, table)
        );
        if let Err(e) = conn.query(&probe, &[]).await {
            report.problem(
                Some(name),
                Some("invalid-sql"),
                format!(
                    "{}: step {name:?}: the key walk fails (check `where`): {e}",
                    at(plan, step, "where")
                ),
                None,
            );
        }
    }
}

/// Runs the walk's first query, prepares the batch statement, and with an integer key runs it on
/// an empty range (below the lowest key) inside a transaction that is rolled back, so that a
/// typo in `where` or `sql` shows now rather than at the first batch. An error names the plan
/// key that caused it.
async fn try_batch(
    conn: &mut dyn Conn,
    table: &str,
    key: &str,
    filter: Option<&str>,
    sql: &str,
) -> Result<(), (&'static str, String)> {
    let dialect = conn.dialect();
    let k = quote_ident(dialect, key);
    let filter_sql = filter.map(|f| format!(" WHERE ({f})")).unwrap_or_default();
    let probe = format!(
        "SELECT {k} FROM {}{filter_sql} ORDER BY {k} LIMIT 1",
        quote_ident(dialect, table)
    );
    let first = conn
        .query(&probe, &[])
        .await
        .map_err(|e| ("where", format!("the key walk fails (check `where`): {e}")))?;
    let rewritten = rewrite_params(sql, dialect, &["start", "end"]);
    let sql_error = |e| ("sql", format!("the batch statement fails: {e}"));
    conn.prepare(&rewritten.sql).await.map_err(sql_error)?;
    // Preparing finds syntax and names; running finds what only execution does (a type the
    // database infers differently, a function that exists for other argument types). That
    // needs a range known to be empty, which only integer arithmetic gives.
    let Some(Value::Int(lowest)) = first.first().map(|row| row.get(0).clone()) else {
        return Ok(());
    };
    let (start, end) = (
        Value::Int(lowest.saturating_sub(1)),
        Value::Int(lowest.saturating_sub(2)),
    );
    let params: Vec<Value> = rewritten
        .order
        .iter()
        .map(|&i| if i == 0 { start.clone() } else { end.clone() })
        .collect();
    conn.begin(Default::default())
        .await
        .map_err(|e| ("sql", e.to_string()))?;
    let result = conn.execute(&rewritten.sql, &params).await;
    let _ = conn.rollback().await;
    result.map(drop).map_err(sql_error)
}
