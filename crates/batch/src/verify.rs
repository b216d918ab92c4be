//! `godwit verify`: compares each copy step's source, as the copy would write it, with its
//! target, key range by key range.
//!
//! The ranges are the source's keys in runs of `batch_size`, widened to meet each other so
//! that together they cover every key (a target row between two source keys, or past the
//! last one, is found). For each range the source rows are read and transformed exactly as
//! the copy does, fitted to the target's column types, and both sides are reduced to a count
//! and a content hash of their rows in a canonical form (decimals without trailing zeros,
//! JSON with sorted keys, bytes in hex, timestamps in UTC; NULL apart from every text): the
//! databases print the same value differently, so the hash is computed here rather than by
//! each database. One range at a time is in memory. Rows the copy sets aside as dead letters
//! are counted apart and listed: they did not arrive, which is a difference.
//!
//! A plain copy within one PostgreSQL database between columns of the same types (the copy
//! that runs as `INSERT … SELECT`) is the exception: both sides print a value alike, so each
//! side's count and MD5 are computed by the database (`Digests`) and only a range whose
//! digests differ is read, to name its first difference. `ROW(…)::text` writes NULL as
//! nothing and quotes a text that is empty or holds a separator, so no two rows print alike.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::Path;

use godwit_driver::{
    normalize_decimal, quote_ident, Conn, DbUrl, Dialect, Error as DbError, KeyKind, SqlType, Value,
};
use godwit_plan::{CopySpec, Plan, StepKind};

use crate::copy::{CopyStep, InDatabase};
use crate::fit::Columns;
use crate::refused::key_text;
use crate::walk::{open_walker, KeyRange, KeyWalk};
use crate::Error;

/// How many batches' worth of keys one walk query returns.
const RANGES_PER_WALK: usize = 16;

/// What `verify` found for one copy step.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepCheck {
    /// The step.
    pub step: String,
    /// Key ranges compared.
    pub ranges: u64,
    /// Rows the copy writes, counted from the source (after the transform), with the rows it
    /// sets aside.
    pub source_rows: u64,
    /// Of `source_rows`, those the copy sets aside as dead letters (`on_row_error = "skip"`):
    /// rows that did not arrive, each listed in its range's `set_aside`.
    pub set_aside: u64,
    /// Rows found in the target over the same key ranges.
    pub target_rows: u64,
    /// The ranges that differ, or that hold rows set aside.
    pub differences: Vec<RangeDifference>,
}

/// A source row the copy sets aside as a dead letter instead of writing it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SetAside {
    /// The row's key.
    pub key: String,
    /// Why the row is set aside.
    pub error: String,
}

/// A key range whose source and target differ.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RangeDifference {
    /// Keys greater than this (`None`: from the lowest key).
    pub after: Option<String>,
    /// Keys up to and including this (`None`: to the highest key).
    pub through: Option<String>,
    /// Rows the copy writes in this range, with the rows it sets aside.
    pub source_rows: u64,
    /// The rows of this range the copy sets aside as dead letters.
    pub set_aside: Vec<SetAside>,
    /// Rows the target holds in this range.
    pub target_rows: u64,
    /// The content hashes, as hexadecimal.
    pub source_hash: String,
    /// The target's.
    pub target_hash: String,
    /// The first key whose row differs: missing in the target, only in the target, or which
    /// columns differ (rows set aside are in `set_aside`, not here).
    pub first_difference: Option<String>,
}

/// Compares every copy step of `plan`. Steps that are not copies are left out.
///
/// # Errors
/// When a database cannot be reached or read, or a step cannot be verified (its target has
/// no column named like the source key).
pub async fn verify(plan: &Plan) -> Result<Vec<StepCheck>, Error> {
    let target_url = DbUrl::new(plan.database.clone());
    let mut out = Vec::new();
    for step in &plan.steps {
        let StepKind::Copy(CopySpec {
            table,
            key,
            filter,
            target_key,
            ..
        }) = &step.kind
        else {
            continue;
        };
        let fail =
            |what: &str, e: &DbError| Error::database(&format!("step {:?}: {what}", step.name), e);
        let source_url = CopyStep::source_url(step, &target_url);
        let mut walker = open_walker(&source_url, step.settings.batch_timeout)
            .await
            .map_err(|e| fail("cannot connect to the source", &e))?;
        let source_dialect = walker.dialect();
        let copy = CopyStep::for_step(step, source_url, source_dialect, Path::new(&plan.path))
            .map_err(|e| Error::invalid(format!("step {:?}: {e}", step.name)))?
            .ok_or_else(|| Error::invalid("a copy step without a copy"))?;
        let mut target = godwit_db::connect(&target_url, &Default::default())
            .await
            .map_err(|e| fail("cannot connect to the plan's database", &e))?;
        let walk = KeyWalk::new(source_dialect, table, key, filter.as_deref());
        let check = verify_step(
            &step.name,
            &copy,
            target_key.as_deref().unwrap_or(key),
            &walk,
            walker.as_mut(),
            target.as_mut(),
            step.settings.batch_size,
        )
        .await
        .map_err(|e| match e.kind() {
            godwit_driver::ErrorKind::Config => Error::invalid(format!(
                "{}: step {:?}: {e}",
                plan.path.display(),
                step.name
            )),
            _ => fail("cannot verify", &e),
        })?;
        out.push(check);
    }
    Ok(out)
}

async fn verify_step(
    name: &str,
    copy: &CopyStep,
    target_key: &str,
    walk: &KeyWalk,
    walker: &mut dyn Conn,
    target: &mut dyn Conn,
    batch_size: u64,
) -> Result<StepCheck, DbError> {
    let columns = copy.target_columns(target).await?;
    let target_key = target_key_column(copy, columns, target_key)?;
    let mut check = StepCheck {
        step: name.to_string(),
        ranges: 0,
        source_rows: 0,
        set_aside: 0,
        target_rows: 0,
        differences: Vec::new(),
    };
    let Some(upper) = walk.upper_key(walker).await?.filter(|v| !v.is_null()) else {
        // An empty source: the target must be empty too.
        let side = read_target(target, copy, &target_key, None, None, &[]).await?;
        compare(&mut check, None, None, (Vec::new(), Vec::new()), side);
        return Ok(check);
    };
    let kind = KeyKind::of(&upper).ok_or_else(|| {
        DbError::permanent(format!("the key holds {upper:?}, which is not a key"))
    })?;
    let mut in_database = in_database_digests(name, copy, target, &target_key).await?;
    let mut after: Option<Value> = None;
    loop {
        let ranges = walk
            .next_ranges(
                walker,
                kind,
                after.as_ref(),
                &upper,
                batch_size,
                RANGES_PER_WALK,
            )
            .await?;
        let Some(last) = ranges.last() else { break };
        let ends = last.reaches_end;
        for range in ranges {
            let through = if ends && range.reaches_end {
                None
            } else {
                Some(&range.last)
            };
            if let Some(digests) = &in_database {
                let (a, t) = (after.as_ref(), through);
                match digests_agree(digests, walker, target, a, t).await {
                    Ok(Some(rows)) => {
                        check.ranges += 1;
                        check.source_rows += rows;
                        check.target_rows += rows;
                        after = Some(range.last);
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) if e.kind() == godwit_driver::ErrorKind::Connection => return Err(e),
                    // A server without `md5` (FIPS mode), say: compare row by row instead.
                    Err(e) => {
                        tracing::debug!(step = name, error = %e, "verify: hashing in the database failed; comparing rows");
                        in_database = None;
                    }
                }
            }
            let (source, names) = source_side(copy, columns, &target_key, &range).await?;
            let side =
                read_target(target, copy, &target_key, after.as_ref(), through, &names).await?;
            compare(
                &mut check,
                after.as_ref().map(shown),
                through.map(shown),
                source,
                side,
            );
            after = Some(range.last);
        }
        if ends {
            break;
        }
    }
    Ok(check)
}

/// The target's name of the column that holds the source key (`target_key`).
fn target_key_column(
    copy: &CopyStep,
    columns: &Columns,
    target_key: &str,
) -> Result<String, DbError> {
    let column = columns.get(target_key).ok_or_else(|| {
        DbError::permanent(format!(
            "verify compares key ranges of the source key {}, and the target table {} has no column {target_key} to hold it; name the one that does with `target_key`",
            copy.key(),
            copy.into()
        ))
    })?;
    Ok(column.name.clone())
}

/// Within one database between columns of the same types, each side's count and hash are
/// computed by the database; only a range whose digests differ is read row by row.
async fn in_database_digests(
    name: &str,
    copy: &CopyStep,
    target: &mut dyn Conn,
    target_key: &str,
) -> Result<Option<Digests>, DbError> {
    let digests = match copy.in_database(target).await? {
        Some(plain) => {
            let at = plain
                .sources
                .iter()
                .position(|n| n.eq_ignore_ascii_case(copy.key()));
            at.filter(|&i| plain.targets[i].eq_ignore_ascii_case(target_key))
                .map(|i| Digests::new(copy, plain, &plain.targets[i], target.dialect()))
        }
        None => None,
    };
    if digests.is_some() {
        tracing::debug!(
            step = name,
            "verify: counts and hashes computed by the database"
        );
    }
    Ok(digests)
}

/// One range of the source as the copy would write it, in canonical form and sorted, with
/// the rows it sets aside; and the target columns the copy writes there.
async fn source_side(
    copy: &CopyStep,
    columns: &Columns,
    target_key: &str,
    range: &KeyRange,
) -> Result<((Side, Vec<SetAside>), Vec<String>), DbError> {
    let (rows, refused) = copy
        .read_range(range.first.clone(), range.last.clone())
        .await
        .map_err(|e| e.to_driver_error())?;
    let mut source_rows = Vec::with_capacity(rows.len());
    let mut unwritable: Side = Vec::new();
    let mut set_aside: Vec<SetAside> = Vec::new();
    let mut names = BTreeSet::new();
    for row in rows {
        match columns.fit(row.clone(), copy.convert()) {
            Ok(fitted) => {
                if !fitted.iter().any(|(n, _)| *n == target_key) {
                    // A plan problem, not a database's: `verify` says exit 2.
                    return Err(DbError::config(format!(
                        "verify finds a copied row's range by its column {target_key}, which the copy does not write; name the target column that holds the source key with `target_key`"
                    )));
                }
                names.extend(fitted.iter().map(|(n, _)| n.clone()));
                source_rows.push(fitted);
            }
            // With `on_row_error = "fail"` the copy cannot have written the row, and
            // verify says so; with `"skip"` it is a dead letter, not expected in the
            // target but listed, since it did not arrive.
            Err(problem) => {
                let key = row
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(target_key))
                    .or_else(|| row.iter().find(|(n, _)| n.eq_ignore_ascii_case(copy.key())))
                    .map(|(_, v)| v);
                let error = format!("cannot be written: {problem}");
                if copy.skips_bad_rows() {
                    // Keyed as the copy's dead letter is, to be found by its key.
                    let key = key.map_or_else(String::new, key_text);
                    set_aside.push(SetAside { key, error });
                } else {
                    // Keyed as the target's rows are, to meet a row written anyway.
                    let key = key.map_or_else(String::new, shown);
                    unwritable.push((key, Canon::Unwritable(error)));
                }
            }
        }
    }
    for letter in refused {
        let error = format!("refused by the transform: {}", letter.error);
        if copy.skips_bad_rows() {
            set_aside.push(SetAside {
                key: letter.key,
                error,
            });
        } else {
            unwritable.push((letter.key, Canon::Unwritable(error)));
        }
    }
    let names: Vec<String> = names.into_iter().collect();
    let mut source = canonical_rows(source_rows, &names, target_key);
    source.extend(unwritable);
    source.sort();
    Ok(((source, set_aside), names))
}

/// The queries that reduce one key range of each side to a row count and an MD5 of its rows'
/// MD5s (of their text), ordered by the key, inside the database (one database, columns of
/// the same types: both sides print a value alike).
struct Digests {
    /// Per side (source, target): the statement for each of (after, through) given or not.
    source: [String; 4],
    target: [String; 4],
}

impl Digests {
    fn new(copy: &CopyStep, plain: &InDatabase, target_key: &str, dialect: Dialect) -> Digests {
        let q = |n: &str| quote_ident(dialect, n);
        let sql = |table: &str, key: &str, columns: &[String], filter: &str, bounds: usize| {
            let k = q(key);
            let mut conditions = Vec::new();
            if bounds & 1 != 0 {
                conditions.push(format!("{k} > {}", dialect.param(conditions.len() + 1)));
            }
            if bounds & 2 != 0 {
                conditions.push(format!("{k} <= {}", dialect.param(conditions.len() + 1)));
            }
            if conditions.is_empty() {
                conditions.push("TRUE".to_string());
            }
            let list: Vec<String> = columns.iter().map(|c| q(c)).collect();
            format!(
                "SELECT count(*), md5(coalesce(string_agg(md5(ROW({})::text), '' ORDER BY {k}), '')) \
                 FROM {} WHERE {}{filter}",
                list.join(", "),
                q(table),
                conditions.join(" AND ")
            )
        };
        let filter = copy.and_filter();
        Digests {
            source: std::array::from_fn(|b| {
                sql(copy.table(), copy.key(), &plain.sources, &filter, b)
            }),
            target: std::array::from_fn(|b| sql(copy.into(), target_key, &plain.targets, "", b)),
        }
    }
}

/// The rows of the range when both sides' counts and digests agree; `None` when they differ
/// (the range is then compared row by row, which names the difference).
async fn digests_agree(
    digests: &Digests,
    source: &mut dyn Conn,
    target: &mut dyn Conn,
    after: Option<&Value>,
    through: Option<&Value>,
) -> Result<Option<u64>, DbError> {
    let bounds = usize::from(after.is_some()) | (usize::from(through.is_some()) << 1);
    let params: Vec<Value> = after.into_iter().chain(through).cloned().collect();
    let digest = |rows: Vec<godwit_driver::Row>| {
        let row = rows.first().cloned();
        row.map(|r| (r.get(0).as_i64(), r.get(1).clone()))
    };
    let s = digest(source.query(&digests.source[bounds], &params).await?);
    let t = digest(target.query(&digests.target[bounds], &params).await?);
    Ok(match (s, t) {
        (Some((Some(n), a)), Some((Some(m), b))) if n == m && a == b => u64::try_from(n).ok(),
        _ => None,
    })
}

/// One side of a range: each row as its key's text and its canonical form, sorted.
type Side = Vec<(String, Canon)>;

/// A row in the form both sides are compared in. Each value is kept apart with its column's
/// name, and SQL NULL is `None`, so no text (not `'NULL'`, not one holding a separator) reads
/// like another value or like NULL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Canon {
    /// The compared columns' names and values' canonical text, in the order of the names.
    Row(Vec<(String, Option<String>)>),
    /// A source row the copy cannot write (with `on_row_error = "fail"`), and why.
    Unwritable(String),
}

async fn read_target(
    target: &mut dyn Conn,
    copy: &CopyStep,
    key: &str,
    after: Option<&Value>,
    through: Option<&Value>,
    names: &[String],
) -> Result<Side, DbError> {
    let dialect = target.dialect();
    let k = quote_ident(dialect, key);
    let mut wanted: Vec<String> = names.to_vec();
    if !wanted.iter().any(|n| n == key) {
        wanted.push(key.to_string());
    }
    wanted.sort();
    let list: Vec<String> = wanted.iter().map(|n| quote_ident(dialect, n)).collect();
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    if let Some(a) = after {
        params.push(a.clone());
        conditions.push(format!("{k} > {}", dialect.param(params.len())));
    }
    if let Some(t) = through {
        params.push(t.clone());
        conditions.push(format!("{k} <= {}", dialect.param(params.len())));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    let sql = format!(
        "SELECT {} FROM {}{filter}",
        list.join(", "),
        quote_ident(dialect, copy.into())
    );
    let columns = copy.target_columns(target).await?;
    let types: Vec<SqlType> = wanted
        .iter()
        .map(|n| columns.get(n).map_or(SqlType::Other, |c| c.sql_type))
        .collect();
    let rows = target.query(&sql, &params).await?;
    let rows = rows
        .into_iter()
        .map(|row| {
            wanted
                .iter()
                .cloned()
                .zip(
                    row.into_values()
                        .into_iter()
                        .zip(&types)
                        // As the source's values are: fitted to the column (a SQLite boolean
                        // reads back as 1, a MariaDB one as an integer).
                        .map(|(v, t)| {
                            let v = t.read(v);
                            t.fit(v.clone()).unwrap_or(v)
                        }),
                )
                .collect::<Vec<(String, Value)>>()
        })
        .collect();
    // Only the columns the copy writes are compared; the key was read to place the row.
    Ok(canonical_rows(rows, names, key))
}

/// Rows as (key, canonical form over `names`), sorted. A column a row lacks reads as NULL,
/// as the target stores it (when the column has no default).
fn canonical_rows(rows: Vec<Vec<(String, Value)>>, names: &[String], key: &str) -> Side {
    let mut out: Side = rows
        .into_iter()
        .map(|row| {
            let get = |name: &str| row.iter().find(|(n, _)| n == name).map(|(_, v)| v);
            let key_text = get(key).map_or_else(String::new, shown);
            let values = names
                .iter()
                .map(|n| (n.clone(), get(n).and_then(canonical)))
                .collect();
            (key_text, Canon::Row(values))
        })
        .collect();
    out.sort();
    out
}

/// Adds one range to `check`: `source` is the rows the copy writes and those it sets aside.
fn compare(
    check: &mut StepCheck,
    after: Option<String>,
    through: Option<String>,
    (source, set_aside): (Side, Vec<SetAside>),
    target: Side,
) {
    let source_rows = (source.len() + set_aside.len()) as u64;
    check.ranges += 1;
    check.source_rows += source_rows;
    check.set_aside += set_aside.len() as u64;
    check.target_rows += target.len() as u64;
    let (source_hash, target_hash) = (hash(&source), hash(&target));
    if source.len() == target.len() && source_hash == target_hash && set_aside.is_empty() {
        return;
    }
    // Rows set aside are listed on their own: `first_difference` is about the rows written.
    let first_difference = first_difference(&source, &target);
    check.differences.push(RangeDifference {
        after,
        through,
        source_rows,
        set_aside,
        target_rows: target.len() as u64,
        source_hash,
        target_hash,
        first_difference,
    });
}

/// What differs first, by key: a row the target lacks, a row only the target has, or the
/// columns of a row that differ. A key may hold several rows (a fan-out copy).
fn first_difference(source: &Side, target: &Side) -> Option<String> {
    use std::collections::BTreeMap;
    let group = |side: &'_ Side| {
        let mut by_key: BTreeMap<String, Vec<Canon>> = BTreeMap::new();
        for (k, r) in side {
            by_key.entry(k.clone()).or_default().push(r.clone());
        }
        by_key
    };
    let (source, target) = (group(source), group(target));
    let keys: std::collections::BTreeSet<&String> = source.keys().chain(target.keys()).collect();
    for key in keys {
        let none = Vec::new();
        let s = source.get(key).unwrap_or(&none);
        let t = target.get(key).unwrap_or(&none);
        if s == t {
            continue;
        }
        if t.is_empty() {
            return Some(format!("key {key}: missing in the target"));
        }
        if s.is_empty() {
            return Some(format!("key {key}: in the target only"));
        }
        if s.len() != t.len() {
            return Some(format!(
                "key {key}: {} rows in the source, {} in the target",
                s.len(),
                t.len()
            ));
        }
        // Rows are sorted on both sides: the first pair that differs shows the columns.
        let (a, b) = s.iter().zip(t).find(|(a, b)| a != b)?;
        let (a, b) = match (a, b) {
            (Canon::Row(a), Canon::Row(b)) => (a, b),
            (Canon::Unwritable(why), _) | (_, Canon::Unwritable(why)) => {
                return Some(format!("key {key}: {why}"))
            }
        };
        let shown = |v: &Option<String>| {
            v.as_ref()
                .map_or_else(|| "NULL".to_string(), |s| format!("{s:?}"))
        };
        let columns: Vec<String> = a
            .iter()
            .zip(b)
            .filter(|(x, y)| x != y)
            .map(|((name, x), (_, y))| format!("{name}: source {}, target {}", shown(x), shown(y)))
            .collect();
        return Some(format!("key {key}: {}", columns.join("; ")));
    }
    None
}

/// A stable hash of one side's rows (the same in every process of one build).
fn hash(side: &Side) -> String {
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    side.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// A key's text in messages.
fn shown(v: &Value) -> String {
    canonical(v).unwrap_or_else(|| "NULL".to_string())
}

/// A value's text for comparison across databases: equal values print alike whichever
/// database gave them. `None` for SQL NULL, which is no text.
fn canonical(v: &Value) -> Option<String> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => b.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Float(f) => format!("{f}"),
        Value::Decimal(s) => decimal(s),
        Value::Text(s) => s.clone(),
        Value::Bytes(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        Value::Json(j) => canonical_json(j).to_string(),
        other => other.text_form().unwrap_or_default(),
    })
}

/// A decimal in one form (`1.50` and `1.5e0` are `1.5`); other text as it is.
fn decimal(s: &str) -> String {
    normalize_decimal(s).unwrap_or_else(|| s.trim().to_string())
}

/// A JSON document with its keys sorted (serde_json's maps are) and its numbers in one form,
/// so that `1.50` in one database and `1.5` in another compare equal.
fn canonical_json(j: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match j {
        J::Number(n) => match normalize_decimal(&n.to_string()) {
            Some(d) => J::String(format!("\u{1}{d}")),
            None => J::Number(n.clone()),
        },
        J::Array(items) => J::Array(items.iter().map(canonical_json).collect()),
        J::Object(map) => J::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), canonical_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row `(id 1, a, b)` in its canonical form.
    fn row(a: Value, b: Value) -> Side {
        let names = ["a".to_string(), "b".to_string(), "id".to_string()];
        let row = vec![
            ("id".into(), Value::Int(1)),
            ("a".into(), a),
            ("b".into(), b),
        ];
        canonical_rows(vec![row], &names, "id")
    }

    #[test]
    fn r11_no_text_reads_like_null_or_another_row() {
        let text = |s: &str| Value::Text(s.into());
        assert_ne!(
            hash(&row(Value::Null, text("x"))),
            hash(&row(text("NULL"), text("x")))
        );
        assert_ne!(
            hash(&row(Value::Null, text("x"))),
            hash(&row(text(""), text("x")))
        );
        // A text holding what once separated the columns.
        assert_ne!(
            hash(&row(text("x\u{1f}b=y"), text("z"))),
            hash(&row(text("x"), text("y\u{1f}b=z")))
        );
        assert_eq!(
            first_difference(&row(text("NULL"), text("x")), &row(Value::Null, text("x"))),
            Some("key 1: a: source \"NULL\", target NULL".to_string())
        );
    }

    #[test]
    fn decimals_compare_by_value() {
        assert_eq!(decimal("12.500"), "12.5");
        assert_eq!(decimal("NaN"), "NaN");
        assert_eq!(
            canonical(&Value::Json(serde_json::json!({"b": 1.5, "a": [2]}))),
            canonical(&Value::Json(
                serde_json::from_str(r#"{"a": [2.0], "b": 1.50}"#).unwrap()
            ))
        );
        assert_eq!(
            canonical(&Value::Decimal("5.00".into())),
            canonical(&Value::Int(5))
        );
    }
}
