//! Dead letters: rows a transform could not handle, kept per run, step and key for a person to
//! look at (`godwit_dead_letters`).

use std::collections::HashMap;

use godwit_driver::{number_placeholders, Conn, Dialect, Error, Result, Value};

use crate::{digest, get_text, schema, text, ClaimedBatch, DeadLetter, DeadLetterRow, StateStore};

impl StateStore {
    /// Records rows a batch's transform could not handle ("dead letters") on `conn`, inside the
    /// transaction the caller holds open there, so that they commit (or roll back) with the
    /// batch's writes and its done record: pass the batch's own connection when the state lives
    /// in the plan's database, or use [`StateStore::record_dead_letters_here`] otherwise.
    ///
    /// A key already recorded for the run and step (a batch run again after a crash or a retry)
    /// has its letter replaced: error, row, batch and time. Within `letters` the last letter for
    /// a key wins. Fencing is [`StateStore::record_done`]'s: a worker that lost its batch finds
    /// out there and rolls these back with the rest.
    ///
    /// One multi-row statement per 8,191 letters (4,095 on SQLite) or per MiB of text (two on
    /// MySQL, which first looks for digest clashes); nothing at all for no letters.
    ///
    /// # Errors
    /// Database errors, and a key whose SHA-256 digest is already held by a different key's
    /// letter (never overwritten).
    pub async fn record_dead_letters(
        conn: &mut dyn Conn,
        batch: &ClaimedBatch,
        letters: &[DeadLetter],
    ) -> Result<()> {
        // The last letter for each key, in the order given: PostgreSQL refuses to update one
        // row twice in a statement, and the latest recording is the one kept anyway.
        let mut last = HashMap::with_capacity(letters.len());
        for (i, letter) in letters.iter().enumerate() {
            last.insert(letter.key.as_str(), i);
        }
        let letters: Vec<Letter> = letters
            .iter()
            .enumerate()
            .filter(|(i, letter)| last.get(letter.key.as_str()) == Some(i))
            .map(|(i, letter)| Letter {
                seq: i as i64,
                digest: digest::sha256_hex(letter.key.as_bytes()),
                letter,
            })
            .collect();
        let max_rows = match conn.dialect() {
            Dialect::Sqlite => 32_766,
            Dialect::Postgres | Dialect::MySql => 65_535,
        } / LETTER_PARAMS;
        let mut rest = &letters[..];
        while !rest.is_empty() {
            let (mut n, mut bytes) = (0, 0);
            while n < rest.len() && n < max_rows {
                let size = rest[n].size();
                if n > 0 && bytes + size > LETTER_BYTES {
                    break;
                }
                bytes += size;
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            write_letters(conn, batch, chunk).await?;
            rest = tail;
        }
        Ok(())
    }

    /// [`StateStore::record_dead_letters`] on the state store's own connection, in a
    /// transaction of its own: the at-least-once path for a state database separate from the
    /// plan's (call it once the batch has committed).
    pub async fn record_dead_letters_here(
        &self,
        batch: &ClaimedBatch,
        letters: &[DeadLetter],
    ) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let (batch, letters) = (batch.clone(), letters.to_vec());
        self.with_conn(move |conn| {
            Box::pin(async move {
                conn.begin(Default::default()).await?;
                Self::record_dead_letters(conn, &batch, &letters).await?;
                conn.commit().await
            })
        })
        .await
    }

    /// The dead letters of `run` (of one step, with `step`), at most `limit` of them, ordered
    /// by step name, then by batch number, then in the order they were recorded (within one
    /// call to [`StateStore::record_dead_letters`], the order of its slice). A letter recorded
    /// again takes the place of its latest recording. Tables from before version 3 have none:
    /// a reader of them gets an empty list.
    pub async fn dead_letters(
        &self,
        run: &str,
        step: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Vec<DeadLetterRow>> {
        let (run, step, known) = (run.to_string(), step.map(str::to_string), self.version);
        self.with_conn(move |conn| {
            Box::pin(async move {
                // A reader creates nothing; older tables have no letters.
                if !schema::at_least(conn, known, 3).await? {
                    return Ok(Vec::new());
                }
                let d = conn.dialect();
                let mut q = "SELECT step, batch, key_text, error, row_json, created_ms \
                             FROM godwit_dead_letters WHERE run = ?"
                    .to_string();
                let mut params = vec![text(run)];
                if let Some(step) = step {
                    q.push_str(" AND step = ?");
                    params.push(text(step));
                }
                // The order of the godwit_dead_letters_order index, so that a limit reads no
                // more than it returns; the digest breaks the last ties.
                q.push_str(" ORDER BY step, batch, created_ms, seq, key_digest");
                if let Some(limit) = limit {
                    q.push_str(&format!(" LIMIT {}", limit.min(i64::MAX as u64)));
                }
                let rows = conn.query(&number_placeholders(&q, d), &params).await?;
                Ok(rows
                    .iter()
                    .map(|r| DeadLetterRow {
                        step: get_text(r.get(0)).unwrap_or_default(),
                        batch: r.get(1).as_i64().unwrap_or_default(),
                        key: get_text(r.get(2)).unwrap_or_default(),
                        error: get_text(r.get(3)).unwrap_or_default(),
                        row: get_text(r.get(4)).unwrap_or_default(),
                        created_ms: r.get(5).as_i64().unwrap_or_default(),
                    })
                    .collect())
            })
        })
        .await
    }
}

/// Parameters a dead letter binds: run, step, batch, key digest, key, seq, error, row.
const LETTER_PARAMS: usize = 8;

/// The most text bound in one statement of dead letters (one larger letter goes alone): MySQL
/// sends a statement's parameters in one packet, and `max_allowed_packet` can be as small as
/// 4 MiB.
const LETTER_BYTES: usize = 1 << 20;

/// A dead letter about to be written: its position in the caller's slice, for the listing's
/// order, and its key's digest.
struct Letter<'a> {
    seq: i64,
    digest: String,
    letter: &'a DeadLetter,
}

impl Letter<'_> {
    fn size(&self) -> usize {
        self.letter.key.len() + self.letter.error.len() + self.letter.row.len()
    }
}

fn digest_clash(batch: &ClaimedBatch, key: Option<&str>) -> Error {
    let key = key.map(|k| format!(" {k:?}")).unwrap_or_default();
    Error::permanent(format!(
        "step {:?}: the dead letter of key{key} was not recorded: the SHA-256 digest of its key \
         is held by another key's letter in godwit_dead_letters",
        batch.step
    ))
}

/// Writes one chunk of dead letters in one multi-row upsert that replaces a key's earlier
/// letter only when the stored key is the same text, not merely the same digest.
async fn write_letters(
    conn: &mut dyn Conn,
    batch: &ClaimedBatch,
    chunk: &[Letter<'_>],
) -> Result<()> {
    let d = conn.dialect();
    if d == Dialect::MySql {
        // MySQL counts a row its ON DUPLICATE KEY UPDATE left alone as found, like an insert,
        // so a clash cannot be told from the count: look for one first. Usually nothing is
        // stored yet and nothing comes back.
        let q = format!(
            "SELECT key_digest, key_text FROM godwit_dead_letters \
             WHERE run = ? AND step = ? AND key_digest IN ({})",
            vec!["?"; chunk.len()].join(", ")
        );
        let mut params = vec![text(batch.run.clone()), text(batch.step.clone())];
        params.extend(chunk.iter().map(|l| text(l.digest.clone())));
        for row in conn.query(&q, &params).await? {
            let (digest, key) = (get_text(row.get(0)), get_text(row.get(1)));
            if let Some(l) = chunk.iter().find(|l| Some(&l.digest) == digest.as_ref()) {
                if Some(&l.letter.key) != key.as_ref() {
                    return Err(digest_clash(batch, Some(&l.letter.key)));
                }
            }
        }
    }
    let now = schema::now_ms(d);
    let upsert = match d {
        Dialect::Postgres | Dialect::Sqlite => {
            "ON CONFLICT (run, step, key_digest) DO UPDATE SET batch = excluded.batch, \
             seq = excluded.seq, error = excluded.error, row_json = excluded.row_json, \
             created_ms = excluded.created_ms \
             WHERE godwit_dead_letters.key_text = excluded.key_text"
        }
        // key_text is never assigned, so every condition reads the stored key.
        Dialect::MySql => {
            "ON DUPLICATE KEY UPDATE \
             batch = IF(key_text = VALUES(key_text), VALUES(batch), batch), \
             seq = IF(key_text = VALUES(key_text), VALUES(seq), seq), \
             error = IF(key_text = VALUES(key_text), VALUES(error), error), \
             row_json = IF(key_text = VALUES(key_text), VALUES(row_json), row_json), \
             created_ms = IF(key_text = VALUES(key_text), VALUES(created_ms), created_ms)"
        }
    };
    let q = format!(
        "INSERT INTO godwit_dead_letters (run, step, batch, key_digest, key_text, seq, error, \
         row_json, created_ms) VALUES {} {upsert}",
        vec![format!("(?, ?, ?, ?, ?, ?, ?, ?, {now})"); chunk.len()].join(", ")
    );
    let mut params = Vec::with_capacity(chunk.len() * LETTER_PARAMS);
    for l in chunk {
        params.extend([
            text(batch.run.clone()),
            text(batch.step.clone()),
            Value::Int(batch.batch),
            text(l.digest.clone()),
            text(l.letter.key.clone()),
            Value::Int(l.seq),
            text(l.letter.error.clone()),
            text(l.letter.row.clone()),
        ]);
    }
    let written = conn.execute(&number_placeholders(&q, d), &params).await?;
    // PostgreSQL and SQLite count inserted and replaced rows, not those the key check kept.
    if d != Dialect::MySql && written != chunk.len() as u64 {
        return Err(digest_clash(batch, None));
    }
    Ok(())
}
