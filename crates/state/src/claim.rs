//! The claim protocol: how a worker takes a batch, across processes and machines.
//!
//! * A new batch is claimed by advancing the step's cursor (`godwit_steps.next_batch`,
//!   `cursor_key`) and inserting the batch rows in one short transaction, so two workers never
//!   claim overlapping ranges. Where the state lives in the database whose key is walked
//!   (PostgreSQL, integer keys), one statement locks the cursor row, walks from it, moves it
//!   and inserts the rows ([`StateStore::claim_walked`]): a competing claim waits for the row
//!   and then takes the next ranges, instead of failing. Elsewhere the worker reads the
//!   cursor, walks, and advances it with a compare-and-set on `next_batch`
//!   ([`StateStore::claim_new_batches`]), reading it again when another worker was first; a
//!   walk that found no more keys marks the step exhausted the same way
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

/// What a claim that walked under the cursor row's lock ([`StateStore::claim_walked`]) did.
#[derive(Debug)]
pub enum WalkedClaim {
    /// It claimed these batches.
    Claimed {
        /// The batches, in key order.
        batches: Vec<ClaimedBatch>,
        /// Whether the last of them reaches the end of the walk.
        exhausted: bool,
    },
    /// The walk found no key after the cursor: the step is marked walked to its end.
    Exhausted,
    /// No cursor row to take: the step was walked to its end already, or the run is of
    /// another generation now. The step's record says which.
    NotHere,
}

/// The largest number of ranges one walked claim takes (the rows of its token list).
const MAX_WALKED: usize = 64;

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

    /// Claims the next ranges of a step in one statement on `conn`, a connection (outside a
    /// transaction) to the database that holds both the state tables and the walked key, on
    /// PostgreSQL with an integer key: the statement locks the step's cursor row, walks up to
    /// `batches` ranges of `batch_size` keys from it (`keys`, given the SQL of the first key,
    /// the upper key and the limit, returns the key scan: `KeyWalk::keys_from`), moves the
    /// cursor past them, inserts their rows with tokens and leases, and commits.
    ///
    /// A claim by another process meanwhile waits for the cursor row and then walks from
    /// where this one left it, so no claim is lost to a race, and none re-reads or re-walks.
    /// The row stays locked only while the statement runs in the server (the walk included,
    /// which reads the same database), never across a round trip to the client. The commit is
    /// asynchronous (see [`StateStore::claim_new_batches`]) unless the claim ends the walk.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_walked(
        &self,
        conn: &mut dyn Conn,
        run: &str,
        step: &str,
        keys: impl FnOnce(&str, &str, &str) -> Option<String>,
        upper: i64,
        batch_size: i64,
        batches: usize,
        worker: &str,
        lease: Duration,
    ) -> Result<WalkedClaim> {
        let batches = batches.clamp(1, MAX_WALKED);
        let batch_size = batch_size.max(1);
        let limit = batch_size.saturating_mul(batches as i64);
        // The first key after the cursor: integer keys are walked from cursor + 1 (a cursor
        // at i64::MAX is the upper key itself, so the walk has ended and the row is not
        // taken); a step not walked yet starts at the smallest key.
        let from = "coalesce((SELECT cursor_key::bigint + 1 FROM cur), \
                    '-9223372036854775808'::bigint)";
        let Some(keys) = keys(from, "$3", "$4") else {
            return Ok(WalkedClaim::NotHere);
        };
        let mine = self.generation(run);
        let mut params = vec![
            text(run),
            text(step),
            Value::Int(upper),
            Value::Int(limit),
            Value::Int(batch_size),
            text(worker),
            lease_ms(lease),
        ];
        let fenced = match &mine {
            Some(generation) => {
                params.push(text(generation.clone()));
                " AND EXISTS (SELECT 1 FROM godwit_runs g WHERE g.run = $1 AND g.generation = $8)"
            }
            None => "",
        };
        let mut rows = Vec::with_capacity(batches);
        for i in 0..batches {
            let token = uuid::Uuid::new_v4().simple().to_string();
            rows.push(format!(
                "(${}::bigint, ${})",
                params.len() + 1,
                params.len() + 2
            ));
            params.extend([Value::Int(i as i64), text(token)]);
        }
        let now = schema::now_ms(Dialect::Postgres);
        // FOR NO KEY UPDATE: what the UPDATE of the row takes anyway, so claims queue on it
        // while readers of the row do not wait. After the wait the row is read as the claim
        // before left it. The commit is synchronous only for the claim that ends the walk
        // (set_config local to this statement's transaction), which flushes the claims before.
        let q = format!(
            "WITH cur AS ( \
               SELECT next_batch, cursor_key FROM godwit_steps \
               WHERE run = $1 AND step = $2 AND exhausted = 0{fenced} \
               FOR NO KEY UPDATE), \
             keys AS ( \
               SELECT godwit_key, row_number() OVER (ORDER BY godwit_key) AS n \
               FROM ({keys}) l WHERE EXISTS (SELECT 1 FROM cur)), \
             ranges AS ( \
               SELECT (n - 1) / $5 AS i, min(godwit_key) AS first_key, max(godwit_key) AS last_key, \
                 count(*) AS n_rows \
               FROM keys GROUP BY 1), \
             walked AS ( \
               SELECT count(*) AS n_batches, max(last_key) AS last_key, \
                 coalesce(sum(n_rows), 0) < $4 OR coalesce(max(last_key) = $3, false) AS ends \
               FROM ranges), \
             moved AS ( \
               UPDATE godwit_steps s SET cursor_key = coalesce(w.last_key::text, s.cursor_key), \
                 next_batch = s.next_batch + w.n_batches, \
                 exhausted = CASE WHEN w.ends THEN 1 ELSE 0 END \
               FROM cur, walked w \
               WHERE s.run = $1 AND s.step = $2 \
               RETURNING s.next_batch - w.n_batches AS first_batch, w.ends), \
             claimed AS ( \
               INSERT INTO godwit_batches (run, step, batch, start_key, end_key, n_rows, state, \
                 token, worker, lease_until_ms, attempts, claimed_ms) \
               SELECT $1, $2, m.first_batch + r.i, r.first_key::text, r.last_key::text, r.n_rows, \
                 'claimed', v.token, $6, {now} + $7, 0, {now} \
               FROM moved m, ranges r JOIN (VALUES {}) AS v (i, token) ON v.i = r.i \
               RETURNING batch, token, start_key, end_key, n_rows) \
             SELECT c.batch, c.token, c.start_key, c.end_key, c.n_rows, \
               CASE WHEN m.ends THEN 1 ELSE 0 END, \
               set_config('synchronous_commit', CASE WHEN m.ends THEN 'on' ELSE 'off' END, true) \
             FROM moved m LEFT JOIN claimed c ON true \
             ORDER BY c.batch",
            rows.join(", ")
        );
        let found = conn.query(&q, &params).await?;
        let Some(first) = found.first() else {
            return Ok(WalkedClaim::NotHere);
        };
        let exhausted = first.get(5).as_i64() == Some(1);
        let mut claimed = Vec::with_capacity(found.len());
        for row in &found {
            let Some(batch) = row.get(0).as_i64() else {
                continue;
            };
            claimed.push(ClaimedBatch {
                run: run.to_string(),
                generation: mine.clone(),
                step: step.to_string(),
                batch,
                token: get_text(row.get(1)).unwrap_or_default(),
                start_key: get_text(row.get(2)),
                end_key: get_text(row.get(3)),
                n_rows: row.get(4).as_i64().unwrap_or_default(),
                attempts: 0,
            });
        }
        if claimed.is_empty() {
            return Ok(WalkedClaim::Exhausted);
        }
        Ok(WalkedClaim::Claimed {
            batches: claimed,
            exhausted,
        })
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
