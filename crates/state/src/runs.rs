//! Runs: creating, resuming or restarting one (`begin_run`), storing one for workers (`submit`),
//! the list workers look at, a run's state, and its progress for `godwit status`.

use godwit_driver::{number_placeholders, Conn, Error, ErrorKind, Result, Value};

use crate::fence::{ensure_generation, read_run, RunRead};
use crate::{
    get_text, opt_text, schema, status, text, Restart, RunSpec, RunStart, RunState, RunStatus,
    StateStore, StepSpec, StoredRun,
};

impl StateStore {
    /// Creates the run or resumes it. A stored run whose steps differ from `spec` is refused
    /// unless `restart` forgets its progress.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when the stored plan differs, naming the first step that changed.
    ///
    /// From then on this store works on the generation of the run it found or made: once
    /// another process restarts the run, this store's claims and records match nothing and
    /// fail with [`RESTARTED`](crate::RESTARTED).
    pub async fn begin_run(&self, spec: &RunSpec, restart: Restart) -> Result<RunStart> {
        let (name, spec) = (spec.name.clone(), spec.clone());
        let (start, generation) = self
            .with_conn(move |conn| {
                Box::pin(begin_run(conn, spec, restart, RunState::Running, false))
            })
            .await?;
        self.set_generation(&name, generation);
        Ok(start)
    }

    /// Stores a run for workers without starting it (`godwit submit`): created `pending`, or
    /// left as it is when a run of the same plan exists. Submitting twice, even at once,
    /// makes one run.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] when a stored run of that name has different steps.
    pub async fn submit(&self, spec: &RunSpec) -> Result<RunStart> {
        let spec = spec.clone();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let (start, _) =
                    begin_run(conn, spec, Restart::Resume, RunState::Pending, false).await?;
                Ok(start)
            })
        })
        .await
    }

    /// Marks a submitted run as started, when a worker first takes it up.
    pub async fn start_run(&self, run: &str) -> Result<()> {
        let q = format!(
            "UPDATE godwit_runs SET state = 'running', started_ms = COALESCE(started_ms, {}) \
             WHERE run = ? AND state = 'pending'",
            schema::now_ms(self.dialect)
        );
        self.execute(q, vec![text(run)]).await.map(drop)
    }

    /// The names of every stored run, oldest first.
    pub async fn run_names(&self) -> Result<Vec<String>> {
        let rows = self
            .query(
                "SELECT run FROM godwit_runs ORDER BY created_ms, run",
                Vec::new(),
            )
            .await?;
        Ok(rows.iter().filter_map(|r| get_text(r.get(0))).collect())
    }

    /// The runs workers should look at: pending, running or paused, oldest first.
    pub async fn unfinished_runs(&self) -> Result<Vec<StoredRun>> {
        let rows = self
            .query(
                "SELECT run, state, plan_text FROM godwit_runs \
                 WHERE state IN ('pending', 'running', 'paused') ORDER BY created_ms, run",
                Vec::new(),
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| StoredRun {
                name: get_text(r.get(0)).unwrap_or_default(),
                state: RunState::parse(&get_text(r.get(1)).unwrap_or_default()),
                plan_text: get_text(r.get(2)).unwrap_or_default(),
            })
            .collect())
    }

    /// Reads a run's state.
    ///
    /// # Errors
    /// [`RESTARTED`](crate::RESTARTED) when this store began the run and another process
    /// restarted it since.
    pub async fn run_state(&self, run: &str) -> Result<Option<RunState>> {
        Ok(self.run_control(run).await?.map(|control| control.state))
    }

    /// Sets a run's state; `error` is kept for `failed`. Returns whether this call changed it:
    /// of several processes ending a run together, one finds `true`, so that one of them
    /// tells the world (a notification) and the first failure's error is the one kept.
    pub async fn set_run_state(
        &self,
        run: &str,
        state: RunState,
        error: Option<&str>,
    ) -> Result<bool> {
        let (run, error) = (run.to_string(), error.map(str::to_string));
        let mine = self.generation(&run);
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let now = schema::now_ms(d);
                let finished = matches!(
                    state,
                    RunState::Done | RunState::Failed | RunState::Cancelled
                );
                let fence = if mine.is_some() {
                    " AND generation = ?"
                } else {
                    ""
                };
                let q = format!(
                    "UPDATE godwit_runs SET state = ?, error = ?, finished_ms = {} \
                     WHERE run = ? AND state <> ?{fence}",
                    if finished { now } else { "NULL" }
                );
                let mut params = vec![
                    text(state.as_str()),
                    opt_text(error.as_deref()),
                    text(run.clone()),
                    text(state.as_str()),
                ];
                params.extend(mine.clone().map(text));
                let changed = conn.execute(&number_placeholders(&q, d), &params).await? > 0;
                if !changed && mine.is_some() {
                    ensure_generation(conn, &run, mine.as_deref()).await?;
                }
                Ok(changed)
            })
        })
        .await
    }

    /// The progress of a run, as `godwit status` shows it; `None` when no such run is stored.
    pub async fn status(&self, run: &str) -> Result<Option<RunStatus>> {
        let (run, known) = (run.to_string(), self.version);
        self.with_conn(move |conn| {
            Box::pin(async move {
                let columns = status::Columns::read(conn, known).await?;
                status::read(conn, run, columns).await
            })
        })
        .await
    }
}

/// Creates, resumes or restarts a run; returns how, and the generation the caller works on.
async fn begin_run(
    conn: &mut dyn Conn,
    spec: RunSpec,
    restart: Restart,
    initial: RunState,
    raced: bool,
) -> Result<(RunStart, String)> {
    let d = conn.dialect();
    let run = spec.name.clone();
    if let Some(row) = read_run(conn, &run, RunRead::Plain).await? {
        if restart == Restart::Forget {
            // A new generation. The run's row goes first: on MySQL a claim reads it with a
            // share lock, so the restart waits for claims under way and they for it. The
            // steps go before the batches: on PostgreSQL a claim moving a step's cursor holds
            // its row, so once the step is deleted the batches that claim inserted are
            // committed and visible to the delete of the batches. Processes still working on
            // the old generation then find their claims and records refused.
            conn.begin(Default::default()).await?;
            for table in [
                "godwit_runs",
                "godwit_steps",
                "godwit_batches",
                "godwit_dead_letters",
            ] {
                conn.execute(
                    &number_placeholders(&format!("DELETE FROM {table} WHERE run = ?"), d),
                    &[text(run.clone())],
                )
                .await?;
            }
            let generation = insert_run(conn, &spec, initial).await?;
            conn.commit().await?;
            return Ok((RunStart::Created, generation));
        }
        let stored = conn
            .query(
                &number_placeholders(
                    "SELECT step, definition FROM godwit_steps WHERE run = ? ORDER BY position",
                    d,
                ),
                &[text(run.clone())],
            )
            .await?;
        let stored: Vec<StepSpec> = stored
            .iter()
            .map(|r| StepSpec {
                name: get_text(r.get(0)).unwrap_or_default(),
                definition: get_text(r.get(1)).unwrap_or_default(),
                batch_size: 0,
            })
            .collect();
        if let Some(problem) = plan_difference(&stored, &spec.steps) {
            return Err(Error::config(format!(
                "the run {run:?} stored in the state database was started from a different plan: {problem}; \
                 finish it with the plan it started with, or start over with `godwit run --restart` \
                 (rows already changed stay changed)"
            )));
        }
        // Read before the steps were compared: if the run was restarted since, this process
        // works on a generation already gone and is refused at its first claim.
        let generation = row.generation.unwrap_or_default();
        let start = if row.state == Some(RunState::Done) {
            RunStart::AlreadyDone
        } else {
            RunStart::Resumed
        };
        return Ok((start, generation));
    }
    conn.begin(Default::default()).await?;
    match insert_run(conn, &spec, initial).await {
        Ok(generation) => {
            conn.commit().await?;
            Ok((RunStart::Created, generation))
        }
        Err(e) if e.kind() == ErrorKind::Permanent && !raced => {
            // Most likely another process created the run between our read and insert: resume
            // theirs. Only once: a second failure is a real error (a name too long, no rights).
            conn.rollback().await?;
            Box::pin(begin_run(conn, spec, Restart::Resume, initial, true)).await
        }
        Err(e) => Err(e),
    }
}

/// Inserts a run and its steps; returns the run's new generation.
async fn insert_run(conn: &mut dyn Conn, spec: &RunSpec, initial: RunState) -> Result<String> {
    let d = conn.dialect();
    let generation = uuid::Uuid::new_v4().simple().to_string();
    let now = schema::now_ms(d);
    let started = if initial == RunState::Pending {
        "NULL"
    } else {
        now
    };
    conn.execute(
        &number_placeholders(&format!(
                "INSERT INTO godwit_runs (run, state, plan_text, created_ms, started_ms, generation) \
                 VALUES (?, ?, ?, {now}, {started}, ?)"
            ), d),
        &[
            text(spec.name.clone()),
            text(initial.as_str()),
            text(spec.plan_text.clone()),
            text(generation.clone()),
        ],
    )
    .await?;
    for (position, step) in spec.steps.iter().enumerate() {
        conn.execute(
            &number_placeholders(
                "INSERT INTO godwit_steps (run, step, position, definition, state, initialized, next_batch, exhausted, batch_size) \
                 VALUES (?, ?, ?, ?, 'pending', 0, 0, 0, ?)",
                d,
            ),
            &[
                text(spec.name.clone()),
                text(step.name.clone()),
                Value::Int(position as i64),
                text(step.definition.clone()),
                Value::Int(step.batch_size),
            ],
        )
        .await?;
    }
    Ok(generation)
}

/// The first difference between the stored steps and the plan's, in words.
fn plan_difference(stored: &[StepSpec], planned: &[StepSpec]) -> Option<String> {
    for step in planned {
        match stored.iter().find(|s| s.name == step.name) {
            None => return Some(format!("step {:?} is new", step.name)),
            Some(s) if s.definition != step.definition => {
                return Some(format!("step {:?} changed", step.name))
            }
            Some(_) => {}
        }
    }
    stored
        .iter()
        .find(|s| !planned.iter().any(|p| p.name == s.name))
        .map(|s| format!("step {:?} was removed", s.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_first_changed_step() {
        let s = |n: &str, d: &str| StepSpec {
            name: n.into(),
            definition: d.into(),
            batch_size: 1,
        };
        assert_eq!(plan_difference(&[s("a", "1")], &[s("a", "1")]), None);
        assert_eq!(
            plan_difference(&[s("a", "1")], &[s("a", "2")]).as_deref(),
            Some("step \"a\" changed")
        );
        assert_eq!(
            plan_difference(&[s("a", "1")], &[s("a", "1"), s("b", "1")]).as_deref(),
            Some("step \"b\" is new")
        );
        assert_eq!(
            plan_difference(&[s("a", "1"), s("b", "1")], &[s("a", "1")]).as_deref(),
            Some("step \"b\" was removed")
        );
    }
}
