//! A MySQL or MariaDB replica's lag, as `SHOW REPLICA STATUS` gives it (`SHOW SLAVE STATUS`
//! on servers older than MySQL 8.0.22 and MariaDB 10.5.1): `Seconds_Behind_Source` (MySQL)
//! or `Seconds_Behind_Master` (MariaDB, and MySQL before 8.0.22), NULL while replication does
//! not run.

use godwit_driver::{Replication, Row, Value};

/// The statement, and the one servers that do not know it take instead.
pub(crate) const SHOW_STATUS: [&str; 2] = ["SHOW REPLICA STATUS", "SHOW SLAVE STATUS"];

/// The error number of a statement the server cannot parse: an older server's answer to
/// `SHOW REPLICA STATUS`.
pub(crate) const PARSE_ERROR: &str = "1064";

/// Reads the status's first row (the default replication source's).
pub(crate) fn replica_lag(rows: &[Row]) -> Replication {
    let Some(row) = rows.first() else {
        return Replication::Unknown(
            "is not a replica (SHOW REPLICA STATUS gives no row)".to_string(),
        );
    };
    let named = |names: [&str; 2]| names.iter().find_map(|n| row.by_name(n));
    let seconds = named(["Seconds_Behind_Source", "Seconds_Behind_Master"]);
    if let Some(s) = seconds.and_then(as_seconds) {
        return Replication::from_seconds(s);
    }
    let shown = |names: [&str; 2]| named(names).map(as_text).unwrap_or_default();
    let io = shown(["Replica_IO_Running", "Slave_IO_Running"]);
    let sql = shown(["Replica_SQL_Running", "Slave_SQL_Running"]);
    let mut why = format!("is not replicating (IO thread running: {io}, SQL thread running: {sql}");
    for error in [shown(["Last_IO_Error", ""]), shown(["Last_SQL_Error", ""])] {
        if !error.is_empty() {
            why.push_str(&format!("; {error}"));
        }
    }
    why.push(')');
    Replication::Unknown(why)
}

fn as_seconds(value: &Value) -> Option<f64> {
    match value {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        Value::Decimal(t) | Value::Text(t) => t.trim().parse().ok(),
        Value::Bytes(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
        _ => None,
    }
}

fn as_text(value: &Value) -> String {
    match value {
        Value::Text(t) | Value::Decimal(t) => t.clone(),
        Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn status(pairs: &[(&str, Value)]) -> Vec<Row> {
        let columns: Arc<[String]> = pairs.iter().map(|(n, _)| n.to_string()).collect();
        vec![Row::new(
            columns,
            pairs.iter().map(|(_, v)| v.clone()).collect(),
        )]
    }

    #[test]
    fn reads_mariadb_and_mysql_status_alike() {
        let mariadb = status(&[
            ("Slave_IO_Running", Value::Text("Yes".into())),
            ("Seconds_Behind_Master", Value::Int(7)),
        ]);
        assert_eq!(
            replica_lag(&mariadb),
            Replication::Lag(Duration::from_secs(7))
        );
        let mysql = status(&[("Seconds_Behind_Source", Value::Text("0".into()))]);
        assert_eq!(replica_lag(&mysql), Replication::Lag(Duration::ZERO));
    }

    #[test]
    fn stopped_replication_and_no_replica_cannot_say() {
        let stopped = status(&[
            ("Slave_IO_Running", Value::Text("No".into())),
            ("Slave_SQL_Running", Value::Text("Yes".into())),
            ("Seconds_Behind_Master", Value::Null),
            (
                "Last_IO_Error",
                Value::Text("error connecting to master".into()),
            ),
            ("Last_SQL_Error", Value::Text(String::new())),
        ]);
        assert_eq!(
            replica_lag(&stopped),
            Replication::Unknown(
                "is not replicating (IO thread running: No, SQL thread running: Yes; error connecting to master)"
                    .into()
            )
        );
        assert!(
            matches!(replica_lag(&[]), Replication::Unknown(why) if why.starts_with("is not a replica"))
        );
    }
}
