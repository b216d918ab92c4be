//! `godwit demo`: a SQLite database of customers with pre-2018 Vietnamese mobile numbers, and
//! the bundled plan (`examples/vn-phones.toml`) that rewrites them.

use std::path::{Path, PathBuf};

use godwit_driver::{ConnectOptions, DbUrl, Error, Value};
use godwit_plan::Plan;

/// The bundled plan, as shipped in `examples/vn-phones.toml`.
pub const PLAN_TEXT: &str = include_str!("../../../examples/vn-phones.toml");

/// The 2018 prefix changes: old 11-digit prefix, new 10-digit prefix.
pub const PREFIXES: [(&str, &str); 21] = [
    ("0162", "032"),
    ("0163", "033"),
    ("0164", "034"),
    ("0165", "035"),
    ("0166", "036"),
    ("0167", "037"),
    ("0168", "038"),
    ("0169", "039"),
    ("0120", "070"),
    ("0121", "079"),
    ("0122", "077"),
    ("0126", "076"),
    ("0128", "078"),
    ("0123", "083"),
    ("0124", "084"),
    ("0125", "085"),
    ("0127", "081"),
    ("0129", "082"),
    ("0186", "056"),
    ("0188", "058"),
    ("0199", "059"),
];

/// A freshly built demo database and the plan that migrates it.
pub struct Demo {
    /// The database file.
    pub db_path: PathBuf,
    /// The bundled plan, pointed at the database.
    pub plan: Plan,
    /// Customers with an old 11-digit number, which the plan rewrites.
    pub old_numbers: i64,
    /// Every customer.
    pub rows: i64,
}

/// Converts a number the way the plan does, for checking the result.
pub fn convert(phone: &str) -> Option<String> {
    if phone.len() != 11 {
        return None;
    }
    let (prefix, rest) = phone.split_at(4);
    PREFIXES
        .iter()
        .find(|(old, _)| *old == prefix)
        .map(|(_, new)| format!("{new}{rest}"))
}

/// Builds `dir/demo.db` anew with `rows` customers, two in three with an old number.
///
/// # Errors
/// When the directory or the database cannot be written.
pub async fn prepare(dir: &Path, rows: u64) -> Result<Demo, Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::config(format!("cannot create {}: {e}", dir.display())))?;
    let db_path = dir.join("demo.db");
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", db_path.display()));
        if file.exists() {
            std::fs::remove_file(&file)
                .map_err(|e| Error::config(format!("cannot remove {}: {e}", file.display())))?;
        }
    }
    let url = format!("sqlite://{}", db_path.display());
    let mut conn = godwit_db::connect(
        &DbUrl::new(url.clone()),
        &ConnectOptions {
            create_if_missing: true,
            ..Default::default()
        },
    )
    .await?;
    conn.execute_unprepared(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, phone TEXT NOT NULL)",
    )
    .await?;
    let old_prefixes: String = PREFIXES.iter().map(|(old, _)| *old).collect();
    // Generated in SQLite itself: a million rows take about a second this way. One customer
    // in three already has a 10-digit number (prefix 09x), which the plan must leave alone.
    conn.begin(Default::default()).await?;
    conn.execute(
        "INSERT INTO customers (id, name, phone) \
         WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < ?) \
         SELECT i, 'Customer ' || i, \
           CASE WHEN i % 3 = 0 \
             THEN '09' || substr('0123456789', 1 + (i / 3) % 10, 1) || printf('%07d', (i * 7919) % 10000000) \
             ELSE substr(?, 1 + ((i * 31) % 21) * 4, 4) || printf('%07d', (i * 104729) % 10000000) \
           END \
         FROM seq",
        &[
            Value::Int(i64::try_from(rows).unwrap_or(i64::MAX)),
            Value::Text(old_prefixes),
        ],
    )
    .await?;
    conn.commit().await?;
    let old_numbers = count_old(conn.as_mut()).await?;
    let plan_path = PathBuf::from("examples/vn-phones.toml");
    let env_url = url.clone();
    let plan = godwit_plan::parse(PLAN_TEXT, &plan_path, &move |name| {
        (name == "DEMO_DATABASE_URL").then(|| env_url.clone())
    })
    .map_err(|e| Error::config(format!("the bundled plan is invalid: {e}")))?;
    Ok(Demo {
        db_path,
        plan,
        old_numbers,
        rows: i64::try_from(rows).unwrap_or(i64::MAX),
    })
}

/// Counts the customers that still carry an 11-digit number.
///
/// # Errors
/// When the database cannot be read.
pub async fn count_old(conn: &mut dyn godwit_driver::Conn) -> Result<i64, Error> {
    let rows = conn
        .query(
            "SELECT COUNT(*) FROM customers WHERE length(phone) = 11",
            &[],
        )
        .await?;
    Ok(rows
        .first()
        .and_then(|r| r.get(0).as_i64())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_every_2018_prefix() {
        assert_eq!(convert("01621234567").as_deref(), Some("0321234567"));
        assert_eq!(convert("01201234567").as_deref(), Some("0701234567"));
        assert_eq!(convert("01991234567").as_deref(), Some("0591234567"));
        assert_eq!(convert("0912345678"), None);
        assert_eq!(convert("01001234567"), None);
    }
}
