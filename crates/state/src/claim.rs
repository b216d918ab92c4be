//! The claim protocol: how a worker takes a batch, across processes and machines.
//!
//! * A new batch is claimed by advancing the step's cursor (`godwit_steps.next_batch`,
//!   `cursor_key`) with a compare-and-set on `next_batch` and inserting the batch rows in the
//!   same short transaction ([`StateStore::claim_new_batches`]), so two workers never claim
//!   overlapping ranges; a walk that found no more keys marks the step exhausted the same way
//!   ([`StateStore::mark_exhausted`]).
//! * A claim carries a random token and a lease on the state database's clock; a batch whose
//!   lease ran out (its worker died or froze), or that was given back, is claimed again with a
//!   new token ([`StateStore::claim_abandoned`]). A worker keeps its leases alive
//!   ([`StateStore::extend_leases`]).
//! * Every claim is fenced by the run's generation (`fence.rs`); what becomes of a claimed
//!   batch is recorded in `record.rs`.

use std::time::Duration;

use godwit_driver::{number_placeholders, Conn, Dialect, Result, Value};

use crate::fence::{ensure_generation, fence, fence_params, is_current, restarted, RunRead};
use crate::{
    get_text, lease_ms, opt_text, schema, text, ClaimedBatch, NewBatch, StateStore, StepRecord,
};

impl StateStore {
    /// Claims the consecutive ranges `batches` at once, advancing the step's cursor past the
    /// last of them in one compare-and-set: one claim, one commit and one race for the cursor
    /// row for several batches. Returns `None` when another worker advanced the cursor first.
    ///
    /// On PostgreSQL the claim commits asynchronously: a claim lost in a server crash loses
    /// nothing that committed after it, since the write-ahead log replays in order; its batch
    /// is then claimed again.
    pub async fn claim_new_batches(
        &self,
        run: &str,
        step: &str,
        record: &StepRecord,
        batches: Vec<NewBatch>,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<Vec<ClaimedBatch>>> {
        if batches.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let (run, step, worker) = (run.to_string(), step.to_string(), worker.to_string());
        let (expected, expected_cursor) = (record.next_batch, record.cursor_key.clone());
        let mine = self.generation(&run);
        self.with_conn(move |conn| {
            Box::pin(async move {
                let exhausts = batches.last().is_some_and(|b| b.last);
                let claims: Vec<ClaimedBatch> = batches
                    .into_iter()
                    .enumerate()
                    .map(|(i, batch)| ClaimedBatch {
                        run: run.clone(),
                        generation: mine.clone(),
                        step: step.clone(),
                        batch: expected + i as i64,
                        token: uuid::Uuid::new_v4().simple().to_string(),
                        start_key: batch.start_key,
                        end_key: batch.end_key,
                        n_rows: batch.n_rows,
                        attempts: 0,
                    })
                    .collect();
                let claimed = claim_in_one_transaction(
                    conn,
                    &run,
                    mine.as_deref(),
                    &step,
                    expected,
                    expected_cursor.as_deref(),
                    &claims,
                    exhausts,
                    &worker,
                    lease,
                )
                .await?;
                Ok(claimed.then_some(claims))
            })
        })
        .await
    }

    /// Marks the walk of a step finished, if the cursor is still where `record` saw it.
    pub async fn mark_exhausted(&self, run: &str, step: &str, record: &StepRecord) -> Result<()> {
        let (run, step, expected) = (run.to_string(), step.to_string(), record.next_batch);
        let cursor = record.cursor_key.clone();
        let mine = self.generation(&run);
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let q = format!(
                    "UPDATE godwit_steps SET exhausted = 1 \
                     WHERE run = ? AND step = ? AND next_batch = ? AND cursor_key {} ?{}",
                    null_safe_eq(d),
                    fence(mine.is_some())
                );
                let mut params = vec![
                    text(run.clone()),
                    text(step),
                    Value::Int(expected),
                    opt_text(cursor.as_deref()),
                ];
                params.extend(fence_params(&run, mine.as_deref()));
                if conn.execute(&number_placeholders(&q, d), &params).await? == 0 {
                    ensure_generation(conn, &run, mine.as_deref()).await?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Takes over a batch that was released, or whose holder's lease ran out. Returns `None`
    /// when there is none.
    pub async fn claim_abandoned(
        &self,
        run: &str,
        step: &str,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedBatch>> {
        let (run, step, worker) = (run.to_string(), step.to_string(), worker.to_string());
        let mine = self.generation(&run);
        self.with_conn(move |conn| Box::pin(claim_abandoned(conn, run, mine, step, worker, lease)))
            .await
    }

    /// Extends the lease of a batch this worker still holds. Returns `false` when the batch was
    /// taken over (its done record will then be refused).
    pub async fn extend_lease(&self, batch: &ClaimedBatch, lease: Duration) -> Result<bool> {
        Ok(self.extend_leases(&[batch], lease).await? == 1)
    }

    /// Extends the leases of `batches` (claims of one step) that still carry their tokens, in
    /// one statement: what the heartbeat does for the batches a process runs and has claimed
    /// ahead. Returns how many were extended.
    pub async fn extend_leases(&self, batches: &[&ClaimedBatch], lease: Duration) -> Result<u64> {
        let Some(first) = batches.first() else {
            return Ok(0);
        };
        let (run, step) = (first.run.clone(), first.step.clone());
        let tokens: Vec<String> = batches.iter().map(|b| b.token.clone()).collect();
        self.with_conn(move |conn| {
            Box::pin(async move {
                let d = conn.dialect();
                let marks = vec!["?"; tokens.len()].join(", ");
                let q = format!(
                    "UPDATE godwit_batches SET lease_until_ms = {} + ? \
                     WHERE run = ? AND step = ? AND state = 'claimed' AND token IN ({marks})",
                    schema::now_ms(d)
                );
                let mut params = vec![lease_ms(lease), text(run), text(step)];
                params.extend(tokens.into_iter().map(text));
                conn.execute(&number_placeholders(&q, d), &params).await
            })
        })
        .await
    }
}

/// Advances the cursor past `claims` if it is still at `expected`, and inserts their rows, in
/// one transaction: one statement on PostgreSQL (committed asynchronously), an UPDATE and a
/// multi-row INSERT elsewhere (MySQL has no data-modifying CTE).
#[allow(clippy::too_many_arguments)]
async fn claim_in_one_transaction(
    conn: &mut dyn Conn,
    run: &str,
    generation: Option<&str>,
    step: &str,
    expected: i64,
    expected_cursor: Option<&str>,
    claims: &[ClaimedBatch],
    exhausts: bool,
    worker: &str,
    lease: Duration,
) -> Result<bool> {
    let n = claims.len() as i64;
    let cursor = claims.last().and_then(|c| c.end_key.clone());
    // Parameters: the cursor update's, then the rows'.
    let mut params = vec![
        opt_text(cursor.as_deref()),
        Value::Int(n),
        Value::Int(i64::from(exhausts)),
        text(run),
        text(step),
        Value::Int(expected),
        text(worker),
        lease_ms(lease),
        opt_text(expected_cursor),
    ];
    // On PostgreSQL the cursor moves only while the run is still of this generation (one
    // statement); elsewhere a locking read of the run's row comes first, which a restart's
    // delete of that row waits for (and the other way round).
    if conn.dialect() == Dialect::Postgres {
        return claim_on_postgres(conn, params, run, generation, claims, exhausts).await;
    }
    for claim in claims {
        params.extend([
            text(run),
            text(step),
            Value::Int(claim.batch),
            text(claim.token.clone()),
            text(worker),
            lease_ms(lease),
            opt_text(claim.start_key.as_deref()),
            opt_text(claim.end_key.as_deref()),
            Value::Int(claim.n_rows),
        ]);
    }
    claim_elsewhere(conn, &params, run, generation, claims).await
}

/// [`claim_in_one_transaction`] on PostgreSQL: moves the cursor and inserts the batch rows in
/// one statement; `params` holds the cursor update's parameters.
async fn claim_on_postgres(
    conn: &mut dyn Conn,
    mut params: Vec<Value>,
    run: &str,
    generation: Option<&str>,
    claims: &[ClaimedBatch],
    exhausts: bool,
) -> Result<bool> {
    let d = conn.dialect();
    let now = schema::now_ms(d);
    let n = claims.len() as i64;
    let fenced = match generation {
        Some(generation) => {
            params.push(text(generation));
            " AND EXISTS (SELECT 1 FROM godwit_runs g WHERE g.run = $4 AND g.generation = $10)"
        }
        None => "",
    };
    // PostgreSQL's VALUES rows, numbered after the parameters before them.
    let mut rows = Vec::with_capacity(claims.len());
    for claim in claims {
        let at = params.len();
        rows.push(format!(
            "(${}::bigint, ${}, ${}, ${}::bigint, ${})",
            at + 1,
            at + 2,
            at + 3,
            at + 4,
            at + 5
        ));
        params.extend([
            Value::Int(claim.batch),
            opt_text(claim.start_key.as_deref()),
            opt_text(claim.end_key.as_deref()),
            Value::Int(claim.n_rows),
            text(claim.token.clone()),
        ]);
    }
    let q = format!(
        "WITH moved AS ( \
           UPDATE godwit_steps SET cursor_key = $1, next_batch = next_batch + $2, exhausted = $3 \
           WHERE run = $4 AND step = $5 AND next_batch = $6 AND exhausted = 0 \
             AND cursor_key IS NOT DISTINCT FROM $9::text{fenced} RETURNING run) \
         INSERT INTO godwit_batches (run, step, batch, start_key, end_key, n_rows, state, token, \
           worker, lease_until_ms, attempts, claimed_ms) \
         SELECT $4, $5, v.batch, v.start_key, v.end_key, v.n_rows, 'claimed', v.token, $7, \
           {now} + $8, 0, {now} \
         FROM moved, (VALUES {}) AS v (batch, start_key, end_key, n_rows, token)",
        rows.join(", ")
    );
    // The cursor row stays locked until the commit returns: waiting for the disk there
    // would make every other claimer wait too. The claim that ends the walk commits
    // synchronously (once per step), flushing the others: a step is never found walked
    // to its end while some of its batches can still vanish in a crash.
    conn.begin(godwit_driver::TxOptions {
        async_commit: !exhausts,
        ..Default::default()
    })
    .await?;
    let inserted = conn.execute(&q, &params).await?;
    conn.commit().await?;
    if inserted == 0 {
        ensure_generation(conn, run, generation).await?;
    }
    Ok(inserted == n as u64)
}

/// [`claim_in_one_transaction`] on MySQL and SQLite: reads the run's row with a lock (the
/// generation fence), moves the cursor, then inserts the batch rows; `params` holds the cursor
/// update's nine parameters, then the rows'.
async fn claim_elsewhere(
    conn: &mut dyn Conn,
    params: &[Value],
    run: &str,
    generation: Option<&str>,
    claims: &[ClaimedBatch],
) -> Result<bool> {
    let d = conn.dialect();
    let now = schema::now_ms(d);
    conn.begin(godwit_driver::TxOptions::default()).await?;
    if let Some(generation) = generation {
        if !is_current(conn, run, generation, RunRead::Locked).await? {
            conn.rollback().await?;
            return Err(restarted(run));
        }
    }
    let moved = conn
        .execute(
            &number_placeholders(&format!(
                    "UPDATE godwit_steps SET cursor_key = ?, next_batch = next_batch + ?, exhausted = ? \
                     WHERE run = ? AND step = ? AND next_batch = ? AND exhausted = 0 \
                     AND cursor_key {} ?",
                    null_safe_eq(d)
                ), d),
            &[&params[..6], &params[8..9]].concat(),
        )
        .await?;
    if moved != 1 {
        conn.rollback().await?;
        return Ok(false);
    }
    let q = format!(
        "INSERT INTO godwit_batches (run, step, batch, token, worker, state, lease_until_ms, \
         attempts, claimed_ms, start_key, end_key, n_rows) VALUES {}",
        claims
            .iter()
            .map(|_| format!("(?, ?, ?, ?, ?, 'claimed', {now} + ?, 0, {now}, ?, ?, ?)"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    conn.execute(&q, &params[9..]).await?;
    conn.commit().await?;
    Ok(true)
}

/// `=` that is true for two NULLs: a cursor that has not moved yet is NULL.
fn null_safe_eq(d: Dialect) -> &'static str {
    match d {
        Dialect::Postgres => "IS NOT DISTINCT FROM",
        Dialect::MySql => "<=>",
        Dialect::Sqlite => "IS",
    }
}

async fn claim_abandoned(
    conn: &mut dyn Conn,
    run: String,
    generation: Option<String>,
    step: String,
    worker: String,
    lease: Duration,
) -> Result<Option<ClaimedBatch>> {
    let d = conn.dialect();
    let now = schema::now_ms(d);
    // The (run, step, state) index keeps this away from the done batches.
    let q = format!(
        "SELECT batch, token, start_key, end_key, n_rows, attempts FROM godwit_batches \
         WHERE run = ? AND step = ? AND state IN ('pending', 'claimed') \
           AND (lease_until_ms IS NULL OR lease_until_ms < {now}) \
         ORDER BY batch LIMIT 8"
    );
    let candidates = conn
        .query(
            &number_placeholders(&q, d),
            &[text(run.clone()), text(step.clone())],
        )
        .await?;
    let found = !candidates.is_empty();
    for c in candidates {
        let batch = c.get(0).as_i64().unwrap_or_default();
        let old_token = get_text(c.get(1));
        let token = uuid::Uuid::new_v4().simple().to_string();
        // Compare-and-set on the old token: of two workers taking the same batch, one wins.
        let q = format!(
            "UPDATE godwit_batches SET state = 'claimed', token = ?, worker = ?, \
             lease_until_ms = {now} + ?, claimed_ms = {now} \
             WHERE run = ? AND step = ? AND batch = ? AND {} \
             AND state IN ('pending', 'claimed') AND (lease_until_ms IS NULL OR lease_until_ms < {now}){}",
            if old_token.is_some() { "token = ?" } else { "token IS NULL" },
            fence(generation.is_some())
        );
        let mut params = vec![
            text(token.clone()),
            text(worker.clone()),
            lease_ms(lease),
            text(run.clone()),
            text(step.clone()),
            Value::Int(batch),
        ];
        if let Some(old) = &old_token {
            params.push(text(old.clone()));
        }
        params.extend(fence_params(&run, generation.as_deref()));
        if conn.execute(&number_placeholders(&q, d), &params).await? == 1 {
            return Ok(Some(ClaimedBatch {
                run,
                generation,
                step,
                batch,
                token,
                start_key: get_text(c.get(2)),
                end_key: get_text(c.get(3)),
                n_rows: c.get(4).as_i64().unwrap_or_default(),
                attempts: c.get(5).as_i64().unwrap_or_default(),
            }));
        }
    }
    if found {
        // Candidates were there but none could be taken: others were faster, or the run was
        // restarted and they belong to a generation this process does not run.
        ensure_generation(conn, &run, generation.as_deref()).await?;
    }
    Ok(None)
}
