//! Health signals that throttle steps: a step's `throttle_query`, and the run's replicas'
//! lag (`replicas`, `max_replica_lag`), each asked every few seconds on a connection of its
//! own. A signal that cannot be read throttles too (fail closed): a query that errors, times
//! out or cannot connect says nothing about the database's health.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use godwit_driver::{Conn, DbUrl, Replication, Value};
use tokio::task::JoinHandle;

/// How often each signal is asked.
pub(crate) const THROTTLE_EVERY: Duration = Duration::from_secs(2);

/// The longest a signal may take to answer (connecting included) before it counts as
/// unanswered.
const THROTTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why steps are throttled now, signal by signal, as their watchers last found.
#[derive(Default)]
pub(crate) struct Health {
    /// Each signal's reason to throttle (`None`: it says go), in the order the watchers
    /// started.
    signals: Mutex<Vec<(String, Option<String>)>>,
}

impl Health {
    /// The reasons to throttle now: one for each signal that says so.
    pub(crate) fn reasons(&self) -> Vec<String> {
        self.signals
            .lock()
            .map(|s| s.iter().filter_map(|(_, r)| r.clone()).collect())
            .unwrap_or_default()
    }

    pub(crate) fn set(&self, signal: &str, reason: Option<String>) {
        let Ok(mut signals) = self.signals.lock() else {
            return;
        };
        let held = match signals.iter_mut().find(|(s, _)| s == signal) {
            Some((_, held)) => held,
            None => {
                signals.push((signal.to_string(), None));
                match signals.last_mut() {
                    Some((_, held)) => held,
                    None => return,
                }
            }
        };
        if *held != reason {
            match &reason {
                Some(r) => tracing::info!(signal, reason = %r, "throttled"),
                None => tracing::info!(signal, "no longer throttled"),
            }
            *held = reason;
        }
    }
}

/// What a watcher asks, and where.
pub(crate) enum Signal {
    /// A step's `throttle_query`, on the plan's database: a true answer throttles.
    ThrottleQuery { url: DbUrl, query: String },
    /// A replica's own lag: more than `limit` throttles.
    Replica { url: DbUrl, limit: Duration },
    /// The lag of the replicas connected to a primary, as it sees them.
    Primary { url: DbUrl, limit: Duration },
}

impl Signal {
    fn url(&self) -> &DbUrl {
        match self {
            Signal::ThrottleQuery { url, .. }
            | Signal::Replica { url, .. }
            | Signal::Primary { url, .. } => url,
        }
    }

    /// Names the signal in the health record and the logs.
    fn name(&self) -> String {
        match self {
            Signal::ThrottleQuery { .. } => "throttle_query".to_string(),
            Signal::Replica { url, .. } => format!("replica {url}"),
            Signal::Primary { url, .. } => format!("primary {url}"),
        }
    }

    /// The signal as a reason's subject.
    fn subject(&self) -> String {
        match self {
            Signal::ThrottleQuery { .. } => "throttle_query".to_string(),
            Signal::Replica { url, .. } => format!("the replica {url}"),
            Signal::Primary { url, .. } => format!("the primary {url}"),
        }
    }

    /// Asks the signal once on `conn`: why to throttle, or `None`.
    async fn ask(&self, conn: &mut dyn Conn) -> godwit_driver::Result<Option<String>> {
        let (lag, limit) = match self {
            Signal::ThrottleQuery { query, .. } => {
                let rows = conn.query(query, &[]).await?;
                let first = rows
                    .into_iter()
                    .next()
                    .and_then(|r| r.into_values().into_iter().next());
                let yes = first.is_some_and(|v| is_true(&v));
                return Ok(yes.then(|| "throttle_query returned true".to_string()));
            }
            Signal::Replica { limit, .. } => (conn.replica_lag().await?, limit),
            Signal::Primary { limit, .. } => (conn.primary_lag().await?, limit),
        };
        let lag = match lag {
            Replication::Lag(lag) => lag,
            Replication::Unknown(why) => {
                return Ok(Some(format!("{} {why}, so the step waits", self.subject())))
            }
        };
        if lag <= *limit {
            return Ok(None);
        }
        let lagging = format!(
            "replica lag {:.1}s > {}",
            lag.as_secs_f64(),
            seconds(*limit)
        );
        Ok(Some(match self {
            Signal::Primary { url, .. } => format!("{lagging} on a replica of {url}"),
            _ => format!("{lagging} on {}", self.url()),
        }))
    }

    /// Why to throttle when the signal gives no answer: `error`, or none in time.
    fn unanswered(&self, error: Option<&godwit_driver::Error>) -> String {
        let what = match self {
            Signal::ThrottleQuery { .. } => "throttle_query".to_string(),
            _ => format!("the replica lag from {}", self.subject()),
        };
        match (self, error) {
            (Signal::ThrottleQuery { .. }, Some(e)) => {
                format!("throttle_query failed, so the step waits: {e}")
            }
            (_, Some(e)) => format!("cannot read {what}, so the step waits: {e}"),
            (_, None) => format!(
                "{} gave no answer within {}s, so the step waits",
                self.subject(),
                THROTTLE_TIMEOUT.as_secs()
            ),
        }
    }
}

/// Asks `signal` every [`THROTTLE_EVERY`] and records what it says in `health`, until the
/// returned task is aborted. Until its first answer it throttles.
pub(crate) fn watch(signal: Signal, health: Arc<Health>) -> JoinHandle<()> {
    let name = signal.name();
    let waiting = match &signal {
        Signal::ThrottleQuery { .. } => "waiting for throttle_query's first answer".to_string(),
        _ => format!("waiting for the first answer of {}", signal.subject()),
    };
    health.set(&name, Some(waiting));
    tokio::spawn(async move {
        let mut conn: Option<Box<dyn Conn>> = None;
        loop {
            let answer = tokio::time::timeout(THROTTLE_TIMEOUT, ask(&signal, &mut conn)).await;
            let reason = match answer {
                Ok(Ok(reason)) => reason,
                Ok(Err(e)) => {
                    conn = None;
                    Some(signal.unanswered(Some(&e)))
                }
                Err(_) => {
                    conn = None;
                    Some(signal.unanswered(None))
                }
            };
            health.set(&name, reason);
            tokio::time::sleep(THROTTLE_EVERY).await;
        }
    })
}

/// Asks the signal once, connecting first when needed.
async fn ask(
    signal: &Signal,
    conn: &mut Option<Box<dyn Conn>>,
) -> godwit_driver::Result<Option<String>> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(godwit_db::connect(signal.url(), &Default::default()).await?),
    };
    signal.ask(c.as_mut()).await
}

/// A duration in seconds as a user writes it: `10s`, `1.5s`, `0.25s`.
fn seconds(d: Duration) -> String {
    let text = format!("{:.3}", d.as_secs_f64());
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}s")
}

/// Whether the throttle query's first column says "throttle": true, a non-zero number, or the
/// text `t`, `true`, `yes`, `on` or `1`. No row and NULL say no.
fn is_true(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::Int(i) => *i != 0,
        Value::Float(f) => *f != 0.0,
        Value::Decimal(d) => d.parse::<f64>().is_ok_and(|f| f != 0.0),
        Value::Text(t) => matches!(
            t.trim().to_ascii_lowercase().as_str(),
            "t" | "true" | "yes" | "on" | "1"
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_column_as_the_databases_write_true() {
        for yes in [
            Value::Bool(true),
            Value::Int(1),
            Value::Float(0.5),
            Value::Decimal("1.0".into()),
            Value::Text("t".into()),
        ] {
            assert!(is_true(&yes), "{yes:?}");
        }
        for no in [
            Value::Null,
            Value::Bool(false),
            Value::Int(0),
            Value::Decimal("0.00".into()),
            Value::Text("f".into()),
        ] {
            assert!(!is_true(&no), "{no:?}");
        }
    }

    #[test]
    fn writes_limits_as_users_write_them() {
        assert_eq!(seconds(Duration::from_secs(10)), "10s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5s");
        assert_eq!(seconds(Duration::from_millis(250)), "0.25s");
    }

    /// Each signal keeps its own reason; the reasons come in the order the signals started,
    /// and one that clears leaves the others.
    #[test]
    fn keeps_a_reason_per_signal() {
        let health = Health::default();
        health.set(
            "throttle_query",
            Some("throttle_query returned true".into()),
        );
        health.set("replica a", Some("replica lag 12.0s > 10s on a".into()));
        assert_eq!(
            health.reasons(),
            [
                "throttle_query returned true",
                "replica lag 12.0s > 10s on a"
            ]
        );
        health.set("throttle_query", None);
        assert_eq!(health.reasons(), ["replica lag 12.0s > 10s on a"]);
        health.set("replica a", None);
        assert!(health.reasons().is_empty());
    }
}
