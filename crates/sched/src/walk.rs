//! The key walk: SQL that finds each batch's key range by reading the key index in order.
//!
//! A batch is the next `batch_size` keys after the last claimed one, among rows matching the
//! step's filter and not past the upper key fixed when the step started. The database returns
//! only the first key, the last key and the count (`MIN`/`MAX`/`COUNT` over the limited key
//! scan); UUID keys read the keys themselves, since PostgreSQL has no `min(uuid)` before
//! version 16. No OFFSET anywhere: each query starts where the last ended.

use godwit_driver::{quote_ident, Conn, Dialect, KeyKind, Result, Value};

/// The SQL of one step's walk, quoted and placeholdered for its database.
#[derive(Debug, Clone)]
pub(crate) struct KeyWalk {
    upper_sql: String,
    first_sql: String,
    next_sql: String,
    first_agg_sql: String,
    next_agg_sql: String,
    count_sql: String,
}

/// The keys of the next batch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeyRange {
    pub(crate) first: Value,
    pub(crate) last: Value,
    pub(crate) n_rows: i64,
    /// Whether no key is left after this range.
    pub(crate) reaches_end: bool,
}

impl KeyWalk {
    pub(crate) fn new(dialect: Dialect, table: &str, key: &str, filter: Option<&str>) -> KeyWalk {
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
            count_sql: format!("SELECT COUNT(*) FROM {t} WHERE {k} <= {}{and_filter}", p(1)),
        }
    }

    /// The highest matching key now; the walk stops there even if rows are added later.
    pub(crate) async fn upper_key(&self, conn: &mut dyn Conn) -> Result<Option<Value>> {
        let rows = conn.query(&self.upper_sql, &[]).await?;
        Ok(rows.into_iter().next().map(|r| r.get(0).clone()))
    }

    /// The next range after `after` (from the start when `None`), up to `batch_size` keys.
    pub(crate) async fn next_range(
        &self,
        conn: &mut dyn Conn,
        kind: KeyKind,
        after: Option<&Value>,
        upper: &Value,
        batch_size: u64,
    ) -> Result<Option<KeyRange>> {
        let limit = Value::Int(i64::try_from(batch_size).unwrap_or(i64::MAX));
        if kind != KeyKind::Uuid {
            return self
                .next_range_aggregated(conn, kind, after, upper, limit, batch_size)
                .await;
        }
        let rows = match after {
            Some(after) => {
                conn.query(&self.next_sql, &[after.clone(), upper.clone(), limit])
                    .await?
            }
            None => conn.query(&self.first_sql, &[upper.clone(), limit]).await?,
        };
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Ok(None);
        };
        let last = last.get(0).clone();
        let reaches_end =
            (rows.len() as u64) < batch_size || kind.encode(&last)? == kind.encode(upper)?;
        Ok(Some(KeyRange {
            first: first.get(0).clone(),
            last,
            n_rows: rows.len() as i64,
            reaches_end,
        }))
    }

    /// The same as [`KeyWalk::next_range`], returning one row (first, last, count) instead of
    /// every key of the batch. PostgreSQL before 16 has no `min(uuid)`, so UUID keys take the
    /// general path.
    async fn next_range_aggregated(
        &self,
        conn: &mut dyn Conn,
        kind: KeyKind,
        after: Option<&Value>,
        upper: &Value,
        limit: Value,
        batch_size: u64,
    ) -> Result<Option<KeyRange>> {
        let rows = match after {
            Some(after) => {
                conn.query(&self.next_agg_sql, &[after.clone(), upper.clone(), limit])
                    .await?
            }
            None => {
                conn.query(&self.first_agg_sql, &[upper.clone(), limit])
                    .await?
            }
        };
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let n_rows = row.get(2).as_i64().unwrap_or_default();
        if n_rows == 0 {
            return Ok(None);
        }
        let last = row.get(1).clone();
        let reaches_end =
            (n_rows as u64) < batch_size || kind.encode(&last)? == kind.encode(upper)?;
        Ok(Some(KeyRange {
            first: row.get(0).clone(),
            last,
            n_rows,
            reaches_end,
        }))
    }

    /// Counts the rows the walk will cover, for progress and ETA.
    pub(crate) async fn count(&self, conn: &mut dyn Conn, upper: &Value) -> Result<i64> {
        let rows = conn
            .query(&self.count_sql, std::slice::from_ref(upper))
            .await?;
        Ok(rows
            .first()
            .and_then(|r| r.get(0).as_i64())
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
