//! The key walk: SQL that finds each batch's key range by reading the key index in order.
//!
//! A batch is the next `batch_size` keys after the last claimed one, among rows matching the
//! step's filter and not past the upper key fixed when the step started. The database returns
//! only the first key, the last key and the count (`MIN`/`MAX`/`COUNT` over the limited key
//! scan); UUID keys read the keys themselves, since PostgreSQL has no `min(uuid)` before
//! version 16. No OFFSET anywhere: each query starts where the last ended.

use std::time::Duration;

use godwit_driver::{quote_ident, Conn, Dialect, KeyKind, Result, Row, Value};

/// The SQL of one step's walk, quoted and placeholdered for its database.
#[derive(Debug, Clone)]
pub struct KeyWalk {
    upper_sql: String,
    first_sql: String,
    next_sql: String,
    first_agg_sql: String,
    next_agg_sql: String,
    first_groups_sql: String,
    next_groups_sql: String,
    count_sql: String,
    /// For a claim that walks in its own statement: the quoted table, the quoted key and the
    /// filter (` AND (…)` or nothing), on PostgreSQL only.
    keys_from: Option<(String, String, String)>,
}

/// The keys of the next batch.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRange {
    /// The batch's first key.
    pub first: Value,
    /// The batch's last key.
    pub last: Value,
    /// How many rows it holds.
    pub n_rows: i64,
    /// Whether no key is left after this range.
    pub reaches_end: bool,
}

impl KeyWalk {
    /// The walk of `key` over the rows of `table` that match `filter`.
    pub fn new(dialect: Dialect, table: &str, key: &str, filter: Option<&str>) -> KeyWalk {
        let t = quote_ident(dialect, table);
        let k = quote_ident(dialect, key);
        let and_filter = filter.map(|f| format!(" AND ({f})")).unwrap_or_default();
        let p = |n| dialect.param(n);
        KeyWalk {
            // NULLs sort first in a descending PostgreSQL scan; they are never walked.
            upper_sql: format!(
                "SELECT {k} FROM {t} WHERE {k} IS NOT NULL{and_filter} ORDER BY {k} DESC LIMIT 1"
            ),
            first_sql: format!(
                "SELECT {k} FROM {t} WHERE {k} <= {}{and_filter} ORDER BY {k} LIMIT {}",
                p(1),
                p(2)
            ),
            next_sql: format!(
                "SELECT {k} FROM {t} WHERE {k} > {} AND {k} <= {}{and_filter} ORDER BY {k} LIMIT {}",
                p(1),
                p(2),
                p(3)
            ),
            first_agg_sql: format!(
                "SELECT MIN({k}), MAX({k}), COUNT(*) FROM (SELECT {k} FROM {t} WHERE {k} <= {}{and_filter} ORDER BY {k} LIMIT {}) s",
                p(1),
                p(2)
            ),
            next_agg_sql: format!(
                "SELECT MIN({k}), MAX({k}), COUNT(*) FROM (SELECT {k} FROM {t} WHERE {k} > {} AND {k} <= {}{and_filter} ORDER BY {k} LIMIT {}) s",
                p(1),
                p(2),
                p(3)
            ),
            // Several batches in one walk: number the next n keys and return the first and
            // last of every batch_size of them. The LIMIT stays in the innermost query, on the
            // index scan, so that no database numbers more rows than it returns; and nothing
            // compares keys outside it (SQLite forgets a column's collation in aggregates).
            first_groups_sql: groups_sql(
                &k,
                &format!("SELECT {k} FROM {t} WHERE {k} <= {}{and_filter} ORDER BY {k} LIMIT {}", p(1), p(2)),
                &p(3),
                &p(4),
            ),
            next_groups_sql: groups_sql(
                &k,
                &format!(
                    "SELECT {k} FROM {t} WHERE {k} > {} AND {k} <= {}{and_filter} ORDER BY {k} LIMIT {}",
                    p(1),
                    p(2),
                    p(3)
                ),
                &p(4),
                &p(5),
            ),
            count_sql: format!("SELECT COUNT(*) FROM {t} WHERE {k} <= {}{and_filter}", p(1)),
            keys_from: (dialect == Dialect::Postgres).then(|| (t.clone(), k.clone(), and_filter.clone())),
        }
    }

    /// The walk's key scan as a subquery of another statement, for a claim that walks under
    /// the lock of the step's cursor row in one statement: the keys from `from` to `upper`
    /// (both inclusive), at most `limit` of them, in key order, as the column `godwit_key`.
    /// The three are SQL expressions (placeholders of the statement, a subquery). `None` on a
    /// database other than PostgreSQL, whose claims cannot walk in the same statement.
    pub fn keys_from(&self, from: &str, upper: &str, limit: &str) -> Option<String> {
        let (t, k, and_filter) = self.keys_from.as_ref()?;
        Some(format!(
            "SELECT {k} AS godwit_key FROM {t} WHERE {k} >= {from} AND {k} <= {upper}{and_filter} \
             ORDER BY {k} LIMIT {limit}"
        ))
    }

    /// The next ranges after `after` (from the start when `None`), up to `batches` of them
    /// with `batch_size` keys each (the last may be shorter), in key order. UUID keys take one
    /// range at a time (see `next_range`).
    pub async fn next_ranges(
        &self,
        conn: &mut dyn Conn,
        kind: KeyKind,
        after: Option<&Value>,
        upper: &Value,
        batch_size: u64,
        batches: usize,
    ) -> Result<Vec<KeyRange>> {
        if batches <= 1 || kind == KeyKind::Uuid {
            let at = Position {
                kind,
                after,
                upper,
                batch_size,
            };
            return Ok(self.next_range(conn, at).await?.into_iter().collect());
        }
        let size = i64::try_from(batch_size).unwrap_or(i64::MAX);
        let limit = size.saturating_mul(batches as i64);
        let size_param = Value::Int(size);
        let params = vec![
            upper.clone(),
            Value::Int(limit),
            size_param.clone(),
            size_param,
        ];
        let sql = (&*self.first_groups_sql, &*self.next_groups_sql);
        let rows = query_after(conn, sql, after, params).await?;
        // Rows come in key order: (key, n) for the first and last key of every batch.
        let upper_encoded = kind.encode(upper)?;
        let mut ranges: Vec<KeyRange> = Vec::new();
        let mut open: Option<(Value, i64)> = None;
        let mut total = 0;
        for (i, row) in rows.iter().enumerate() {
            let key = row.get(0).clone();
            let n = row.get(1).as_i64().unwrap_or_default();
            total = total.max(n);
            let starts = (n - 1) % size == 0;
            let ends = n % size == 0 || i + 1 == rows.len();
            if starts {
                open = Some((key.clone(), n));
            }
            if ends {
                let Some((first, first_n)) = open.take() else {
                    continue;
                };
                ranges.push(KeyRange {
                    first,
                    last: key,
                    n_rows: n - first_n + 1,
                    reaches_end: false,
                });
            }
        }
        if let Some(last) = ranges.last_mut() {
            last.reaches_end = total < limit || kind.encode(&last.last)? == upper_encoded;
        }
        Ok(ranges)
    }

    /// The highest matching key now; the walk stops there even if rows are added later.
    pub async fn upper_key(&self, conn: &mut dyn Conn) -> Result<Option<Value>> {
        let rows = conn.query(&self.upper_sql, &[]).await?;
        Ok(rows.into_iter().next().map(|r| r.get(0).clone()))
    }

    /// The next range after `at.after` (from the start when `None`), up to `at.batch_size`
    /// keys.
    async fn next_range(&self, conn: &mut dyn Conn, at: Position<'_>) -> Result<Option<KeyRange>> {
        let limit = Value::Int(i64::try_from(at.batch_size).unwrap_or(i64::MAX));
        if at.kind != KeyKind::Uuid {
            return self.next_range_aggregated(conn, at, limit).await;
        }
        let sql = (&*self.first_sql, &*self.next_sql);
        let rows = query_after(conn, sql, at.after, vec![at.upper.clone(), limit]).await?;
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Ok(None);
        };
        let (first, last) = (first.get(0).clone(), last.get(0).clone());
        at.range(first, last, rows.len() as i64).map(Some)
    }

    /// The same as `next_range`, returning one row (first, last, count) instead of every key
    /// of the batch. PostgreSQL before 16 has no `min(uuid)`, so UUID keys take the general
    /// path.
    async fn next_range_aggregated(
        &self,
        conn: &mut dyn Conn,
        at: Position<'_>,
        limit: Value,
    ) -> Result<Option<KeyRange>> {
        let sql = (&*self.first_agg_sql, &*self.next_agg_sql);
        let rows = query_after(conn, sql, at.after, vec![at.upper.clone(), limit]).await?;
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let n_rows = row.get(2).as_i64().unwrap_or_default();
        if n_rows == 0 {
            return Ok(None);
        }
        at.range(row.get(0).clone(), row.get(1).clone(), n_rows)
            .map(Some)
    }

    /// Counts the rows the walk will cover, for progress and ETA.
    pub async fn count(&self, conn: &mut dyn Conn, upper: &Value) -> Result<i64> {
        let rows = conn
            .query(&self.count_sql, std::slice::from_ref(upper))
            .await?;
        Ok(rows
            .first()
            .and_then(|r| r.get(0).as_i64())
            .unwrap_or_default())
    }
}

/// Where a walk goes on: after which key (from the start when `None`), up to which, and how
/// many keys a batch takes.
#[derive(Clone, Copy)]
struct Position<'a> {
    kind: KeyKind,
    after: Option<&'a Value>,
    upper: &'a Value,
    batch_size: u64,
}

impl Position<'_> {
    /// The range of `n_rows` keys from `first` to `last`. It reaches the end of the walk when
    /// it holds fewer keys than a batch takes or ends at the upper key.
    fn range(&self, first: Value, last: Value, n_rows: i64) -> Result<KeyRange> {
        let reaches_end = (n_rows as u64) < self.batch_size
            || self.kind.encode(&last)? == self.kind.encode(self.upper)?;
        Ok(KeyRange {
            first,
            last,
            n_rows,
            reaches_end,
        })
    }
}

/// Runs the first of `sql` from the walk's start, or the second after the key `after` (its
/// first parameter), with `params` after it.
async fn query_after(
    conn: &mut dyn Conn,
    (first, next): (&str, &str),
    after: Option<&Value>,
    params: Vec<Value>,
) -> Result<Vec<Row>> {
    match after {
        Some(after) => {
            let params: Vec<Value> = std::iter::once(after.clone()).chain(params).collect();
            conn.query(next, &params).await
        }
        None => conn.query(first, &params).await,
    }
}

/// The keys of `limited` (a key scan with its LIMIT) numbered in key order, keeping the first
/// and last of every `size` of them (`size` and `size_again` are placeholders for it).
fn groups_sql(k: &str, limited: &str, size: &str, size_again: &str) -> String {
    format!(
        "SELECT {k}, godwit_n FROM (SELECT {k}, ROW_NUMBER() OVER (ORDER BY {k}) AS godwit_n, \
         COUNT(*) OVER () AS godwit_total FROM ({limited}) l) s \
         WHERE (godwit_n - 1) % {size} = 0 OR godwit_n % {size_again} = 0 OR godwit_n = godwit_total \
         ORDER BY godwit_n"
    )
}

/// Opens the connection a step's key walk runs on, with the database's settings for the walk
/// (`SqlForms::walk_session`: on PostgreSQL, planner settings that keep the filtered walk on
/// the key index).
pub async fn open_walker(
    url: &godwit_driver::DbUrl,
    timeout: Duration,
) -> Result<Box<dyn Conn>, godwit_driver::Error> {
    // A connection of its own, never one from the pool: batch connections carry a session
    // time limit on MySQL that must not cut the walk short, and the walk's settings must not
    // leak into the batches' statements.
    let mut conn = godwit_db::connect(url, &Default::default()).await?;
    if let Some(setup) = conn.forms().walk_session(timeout) {
        conn.execute_unprepared(&setup).await?;
    }
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_for_a_claim_only_on_postgres() {
        let walk = KeyWalk::new(Dialect::Postgres, "Orders", "id", Some("state = 1"));
        assert_eq!(
            walk.keys_from("$9", "$3", "$4").as_deref(),
            Some(
                "SELECT \"id\" AS godwit_key FROM \"Orders\" WHERE \"id\" >= $9 AND \"id\" <= $3 \
                 AND (state = 1) ORDER BY \"id\" LIMIT $4"
            )
        );
        let walk = KeyWalk::new(Dialect::MySql, "orders", "id", None);
        assert_eq!(walk.keys_from("?", "?", "?"), None);
    }

    #[test]
    fn walks_by_key_without_offset() {
        let walk = KeyWalk::new(
            Dialect::Postgres,
            "customers",
            "id",
            Some("length(phone) = 11"),
        );
        assert_eq!(
            walk.next_sql,
            "SELECT \"id\" FROM \"customers\" WHERE \"id\" > $1 AND \"id\" <= $2 AND (length(phone) = 11) ORDER BY \"id\" LIMIT $3"
        );
        let walk = KeyWalk::new(Dialect::MySql, "orders", "id", None);
        assert_eq!(
            walk.upper_sql,
            "SELECT `id` FROM `orders` WHERE `id` IS NOT NULL ORDER BY `id` DESC LIMIT 1"
        );
        assert!(!walk.first_sql.to_ascii_uppercase().contains("OFFSET"));
    }
}
