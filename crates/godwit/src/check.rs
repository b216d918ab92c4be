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
            match godwit_sched::key_problem(conn, table, key).await {
                Ok(None) => {}
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
                    return;
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
                    return;
                }
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
        StepKind::Transform { .. } | StepKind::Copy { .. } => {
            report.problem(
                Some(name),
                Some("unsupported-step"),
                format!(
                    "{}: step {name:?}: row transforms and copies are not supported by this version of godwit yet",
                    at(plan, step, "name")
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
