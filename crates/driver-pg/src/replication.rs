//! PostgreSQL's replication lag: a standby's own (how long ago the last transaction it
//! replayed committed, while it has WAL left to replay), and a primary's `pg_stat_replication`.

use godwit_driver::{Replication, Row, Value};

/// Whether the server is a standby; whether it has neither received nor replayed any WAL;
/// whether it has replayed all it received; seconds since the last transaction it replayed
/// committed on the primary.
pub(crate) const REPLICA_LAG: &str = "SELECT pg_is_in_recovery(), \
     pg_last_wal_receive_lsn() IS NULL AND pg_last_wal_replay_lsn() IS NULL, \
     COALESCE(pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn(), false), \
     EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8";

/// The standbys streaming from the server (a base backup's sender is none), how many of them
/// it hides from this user (`state` is NULL then), and the longest `replay_lag`, in seconds.
/// A NULL `replay_lag` is a standby that has replayed everything and has been idle since.
pub(crate) const PRIMARY_LAG: &str = "SELECT count(*), count(*) FILTER (WHERE state IS NULL), \
     COALESCE(EXTRACT(EPOCH FROM max(COALESCE(replay_lag, interval '0'))), 0)::float8 \
     FROM pg_stat_replication WHERE state IS DISTINCT FROM 'backup'";

/// Reads [`REPLICA_LAG`]'s row.
pub(crate) fn replica_lag(row: Option<&Row>) -> Replication {
    let Some(row) = row else {
        return Replication::Unknown("gave no row for its replication state".into());
    };
    if row.get(0) == &Value::Bool(false) {
        return Replication::Unknown("is not a replica (it is not in recovery)".into());
    }
    if row.get(1) == &Value::Bool(true) {
        return Replication::Unknown(
            "is not a replica (it is in recovery but has neither received nor replayed any WAL)"
                .into(),
        );
    }
    if row.get(2) == &Value::Bool(true) {
        return Replication::Lag(std::time::Duration::ZERO);
    }
    match seconds(row.get(3)) {
        Some(s) => Replication::from_seconds(s),
        None => Replication::Unknown(
            "has WAL to replay but has replayed no transaction since it started, so its lag is unknown"
                .into(),
        ),
    }
}

/// Reads [`PRIMARY_LAG`]'s row.
pub(crate) fn primary_lag(row: Option<&Row>) -> Replication {
    let count = |i: usize| row.and_then(|r| r.get(i).as_i64()).unwrap_or(0);
    if count(0) == 0 {
        return Replication::Unknown(
            "has no replica connected (pg_stat_replication is empty)".into(),
        );
    }
    if count(1) > 0 {
        return Replication::Unknown(
            "hides its replicas' lag from this user: grant it pg_read_all_stats (or pg_monitor)"
                .into(),
        );
    }
    match row.and_then(|r| seconds(r.get(2))) {
        Some(s) => Replication::from_seconds(s),
        None => Replication::Unknown("gave no figure for its replicas' lag".into()),
    }
}

fn seconds(value: &Value) -> Option<f64> {
    match value {
        Value::Float(f) => Some(*f),
        Value::Int(i) => Some(*i as f64),
        Value::Decimal(d) => d.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    fn row(values: Vec<Value>) -> Row {
        let columns: Arc<[String]> = (0..values.len()).map(|i| i.to_string()).collect();
        Row::new(columns, values)
    }

    #[test]
    fn a_standby_lags_only_while_it_has_wal_to_replay() {
        let standby = |caught_up: bool, seconds: Value| {
            replica_lag(Some(&row(vec![
                Value::Bool(true),
                Value::Bool(false),
                Value::Bool(caught_up),
                seconds,
            ])))
        };
        assert_eq!(
            standby(true, Value::Float(300.0)),
            Replication::Lag(Duration::ZERO)
        );
        assert_eq!(
            standby(false, Value::Float(12.5)),
            Replication::Lag(Duration::from_millis(12_500))
        );
        assert!(matches!(
            standby(false, Value::Null),
            Replication::Unknown(_)
        ));
        let primary = replica_lag(Some(&row(vec![
            Value::Bool(false),
            Value::Bool(true),
            Value::Bool(false),
            Value::Null,
        ])));
        assert!(
            matches!(&primary, Replication::Unknown(why) if why.starts_with("is not a replica")),
            "{primary:?}"
        );
    }

    #[test]
    fn a_primary_without_replicas_cannot_say() {
        let primary = |n: i64, hidden: i64, seconds: f64| {
            primary_lag(Some(&row(vec![
                Value::Int(n),
                Value::Int(hidden),
                Value::Float(seconds),
            ])))
        };
        assert!(
            matches!(primary(0, 0, 0.0), Replication::Unknown(why) if why.contains("no replica"))
        );
        assert!(
            matches!(primary(2, 1, 0.0), Replication::Unknown(why) if why.contains("pg_read_all_stats"))
        );
        assert_eq!(primary(2, 0, 3.0), Replication::Lag(Duration::from_secs(3)));
    }
}
