//! The rules of a valid plan, step by step: what `check` reports and what `run` and `submit`
//! refuse.

use godwit_driver::{references_param, Conn, ConnectOptions, DbUrl, Dialect};
use godwit_plan::{CopySpec, Locking, Plan, Step, StepKind};

use crate::ensure;
use crate::findings;
use crate::judgement::{Depth, Judgement, StepJudgement};
use crate::latency::guard_ok;
use crate::probes::{key_ok, rows_ok, try_batch, Walked};
use crate::replicas::replicas_ok;
use crate::script::script_ok;

/// Judges `plan` against its databases (the plan's, the state's, each copy's source, each
/// replica): they answer, every table and key column exists, each key has a unique index,
/// chunked SQL uses `:start` and `:end` and runs, transforms load, each replica tells its lag,
/// the latency guard's probe query runs. Changes nothing.
pub async fn judge(plan: &Plan) -> Judgement {
    let mut judgement = Judgement::new(&plan.name);
    let url = DbUrl::new(plan.database.clone());
    let mut conn = match godwit_db::connect(&url, &ConnectOptions::default()).await {
        Ok(c) => c,
        Err(e) => {
            judgement.unreachable(plan, "database", e);
            return judgement;
        }
    };
    if let Some(state) = &plan.state_database {
        let state = DbUrl::new(state.clone());
        if let Err(e) = godwit_db::connect(&state, &ConnectOptions::default()).await {
            judgement.unreachable(plan, "[state] database", e);
        }
    }
    judge_into(&mut judgement, plan, conn.as_mut(), Depth::Full).await;
    judgement
}

/// Judges every step of `plan` over `conn`, an open connection to the plan's database, as
/// `run` and `submit` do before anything is recorded: what [`judge`] does but for reaching the
/// databases of the plan (the caller did) and for trying statements. A run may join others at
/// work on the same tables, so it tries nothing there; a statement that fails fails its first
/// batch, with the key range and the database's code.
pub async fn judge_before_run(plan: &Plan, conn: &mut dyn Conn) -> Judgement {
    let mut judgement = Judgement::new(&plan.name);
    judge_into(&mut judgement, plan, conn, Depth::BeforeRun).await;
    judgement
}

async fn judge_into(judgement: &mut Judgement, plan: &Plan, conn: &mut dyn Conn, depth: Depth) {
    replicas_ok(judgement, plan, conn, depth).await;
    guard_ok(judgement, plan, conn, depth).await;
    default_locking_ok(judgement, plan, conn);
    for step in &plan.steps {
        let mut judged = StepJudgement {
            plan,
            step,
            depth,
            out: judgement,
        };
        judge_step(&mut judged, conn).await;
    }
}

async fn judge_step(judged: &mut StepJudgement<'_>, conn: &mut dyn Conn) {
    let dialect = conn.dialect();
    // What a one-off step before this one creates (a table, an index, a column) may not exist
    // yet: the plan's tables are asked about when the step starts (`run` checks its key then).
    let step = judged.step;
    let deferred = godwit_plan::runs_after_one_off(judged.plan, step);
    if judged.depth == Depth::Full && !deferred {
        ensure_now(judged, conn).await;
    }
    match &step.kind {
        StepKind::Once { sql } => {
            if judged.depth == Depth::Full {
                findings::once_findings(judged, conn, sql).await;
            }
        }
        StepKind::Chunked {
            table,
            key,
            filter,
            sql,
        } => {
            range_parameters(judged, sql, dialect);
            let walkable = !deferred && key_ok(judged, conn, table, key, filter.as_deref()).await;
            if !walkable || judged.depth == Depth::BeforeRun {
                return;
            }
            if let Err((plan_key, message)) =
                try_batch(conn, table, key, filter.as_deref(), sql).await
            {
                judged.problem("invalid-sql", plan_key, &message, None);
                return;
            }
            let walked = (table.as_str(), key.as_str(), filter.as_deref());
            findings::chunked_findings(judged, conn, walked, sql).await;
        }
        StepKind::Transform {
            table,
            key,
            columns,
            filter,
            script,
        } => {
            script_ok(judged, script);
            if judged.step.key_locations.contains_key("locking")
                && optimistic_cannot_work(judged.step, conn)
            {
                judged.problem("single-writer", "locking", SINGLE_WRITER, None);
            }
            if !deferred && key_ok(judged, conn, table, key, filter.as_deref()).await {
                let walked = Walked {
                    table,
                    key,
                    columns,
                    filter: filter.as_deref(),
                };
                rows_ok(judged, conn, &walked).await;
                if judged.depth == Depth::Full && judged.out.valid {
                    let writes = findings::Writes {
                        table,
                        verb: findings::Verb::Update,
                        columns: columns.clone(),
                    };
                    findings::write_findings(judged, conn, &writes).await;
                }
            }
        }
        StepKind::Copy(copy) => {
            if let Some(script) = &copy.script {
                script_ok(judged, script);
            }
            copy_ok(judged, copy, conn, deferred).await;
            if judged.depth == Depth::Full && judged.out.valid && !deferred {
                // What each inserted row costs in the target: its row triggers.
                let writes = findings::Writes {
                    table: &copy.into,
                    verb: findings::Verb::Insert,
                    columns: Vec::new(),
                };
                findings::write_findings(judged, conn, &writes).await;
            }
        }
    }
}

/// Asks each of the step's `ensure` queries now, to show how much work is left (an info
/// finding `ensure`); one that fails is a problem of the plan, found before a run that would
/// fail on it only once every batch is done.
async fn ensure_now(judged: &mut StepJudgement<'_>, conn: &mut dyn Conn) {
    let step = judged.step;
    for (i, ensure) in step.ensure.iter().enumerate() {
        let index = i + 1;
        let line = ensure.location.line;
        match ensure::ask(conn, ensure).await {
            Ok(answer) => {
                let now = if answer.holds {
                    "holds already"
                } else {
                    "does not hold yet"
                };
                let why = answer
                    .not_boolean
                    .map(|why| format!(" ({why})"))
                    .unwrap_or_default();
                let message = format!(
                    "ensure {index} (line {line}) {now}: it returns {}{why}",
                    answer.shown
                );
                judged.note("ensure", message, Some(ensure.sql.trim().to_string()));
            }
            Err(e) => {
                let what = format!("ensure {index} (line {line}) fails: {e}");
                judged.problem("invalid-ensure", "ensure", &what, None);
            }
        }
    }
}

/// Why `locking = "optimistic"` is refused on SQLite.
const SINGLE_WRITER: &str = "`locking = \"optimistic\"` cannot work on SQLite: a batch's transaction holds the database's only write lock while its transform runs, so other writers wait for it whatever `locking` says; remove the key (SQLite batches always lock, as \"rows\" does)";

/// Whether `step` asks to write optimistically on a database whose batch transaction holds
/// its only write lock (SQLite), where reading ahead would spare no writer a wait: accepting
/// the key would promise what the run cannot keep. Unwritten, the default means "whatever the
/// database allows".
fn optimistic_cannot_work(step: &Step, conn: &dyn Conn) -> bool {
    step.settings.locking == Some(Locking::Optimistic) && conn.forms().single_writer()
}

/// Reports `locking = "optimistic"` in `[defaults]` on SQLite (see `optimistic_cannot_work`),
/// once, where it is written, when a transform step takes it from there.
fn default_locking_ok(judgement: &mut Judgement, plan: &Plan, conn: &dyn Conn) {
    let inherited = plan.steps.iter().any(|step| {
        matches!(step.kind, StepKind::Transform { .. })
            && !step.key_locations.contains_key("locking")
            && optimistic_cannot_work(step, conn)
    });
    if inherited {
        let place = plan.default_place("locking");
        judgement.plan_problem(plan, "single-writer", ("defaults", place), SINGLE_WRITER);
    }
}

/// Reports chunked SQL without `:start` or `:end`: every batch would touch every row.
fn range_parameters(judged: &mut StepJudgement<'_>, sql: &str, dialect: Dialect) {
    for param in ["start", "end"] {
        if !references_param(sql, dialect, param) {
            judged.problem(
                "missing-range-parameter",
                "sql",
                &format!(
                    "a chunked step's sql must use :start and :end (the batch's first and last key), or every batch would touch every row; it lacks :{param}"
                ),
                None,
            );
        }
    }
}

/// Reports a copy whose target table is missing, whose source cannot be reached or walked or
/// lacks a column it names, or (copying rows as they are) whose target lacks a column it
/// copies. After a one-off step only a source of its own is asked: the target may not exist yet.
async fn copy_ok(
    judged: &mut StepJudgement<'_>,
    copy: &CopySpec,
    target: &mut dyn Conn,
    deferred: bool,
) {
    let step = judged.step;
    let CopySpec {
        source,
        table,
        key,
        columns,
        filter,
        into,
        ..
    } = copy;
    let mut target_info = None;
    if !deferred {
        match target.table_info(into).await {
            Ok(Some(info)) => target_info = Some(info),
            Ok(None) => judged.problem(
                "missing-table",
                "into",
                &format!("the target table {into} does not exist in the plan's database; create it first, or in a one-off `sql` step the copy comes `after`"),
                None,
            ),
            Err(e) => judged.database_problem("into", &format!("cannot inspect table {into}"), e),
        }
    }
    let mut own;
    let conn: &mut dyn Conn = match source {
        Some(url) => {
            let url = DbUrl::new(url.clone());
            match godwit_db::connect(&url, &ConnectOptions::default()).await {
                Ok(c) => {
                    own = c;
                    own.as_mut()
                }
                Err(e) => {
                    let what = format!("cannot connect to the source {url}");
                    judged.database_problem("source", &what, e);
                    return;
                }
            }
        }
        None if deferred => return,
        None => target,
    };
    if !key_ok(judged, conn, table, key, copy.filter.as_deref()).await {
        return;
    }
    let named = columns.clone().unwrap_or_default();
    let walked = Walked {
        table,
        key,
        columns: &named,
        filter: filter.as_deref(),
    };
    rows_ok(judged, conn, &walked).await;
    // Rows copied as they are must find every column in the target. (A source that cannot be
    // described was reported with its key.)
    let Some(target_info) = &target_info else {
        return;
    };
    let lacking = godwit_batch::columns_target_lacks(conn, step, target_info)
        .await
        .unwrap_or_default();
    for column in lacking {
        judged.problem(
            "missing-target-column",
            "into",
            &format!("the target table {into} has no column {column} to copy into; name the columns to copy with `columns`, or reshape rows with a transform"),
            None,
        );
    }
}
