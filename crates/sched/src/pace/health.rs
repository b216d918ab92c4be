//! Health signals that throttle a step: its `throttle_query`, asked every few seconds on a
//! connection of its own. A signal that cannot be read throttles too (fail closed): a query
//! that errors, times out or cannot connect says nothing about the database's health.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use godwit_driver::{Conn, DbUrl, Value};
use tokio::task::JoinHandle;

/// How often the throttle query is asked.
pub(crate) const THROTTLE_EVERY: Duration = Duration::from_secs(2);

/// The longest the throttle query may take before it counts as unanswered.
const THROTTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a step is throttled now, as its watchers last found; `None` when it is not.
#[derive(Default)]
pub(crate) struct Health {
    reason: Mutex<Option<String>>,
}

impl Health {
    pub(crate) fn reason(&self) -> Option<String> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }

    fn set(&self, reason: Option<String>) {
        if let Ok(mut held) = self.reason.lock() {
            if *held != reason {
                match &reason {
                    Some(r) => tracing::info!(reason = %r, "throttled"),
                    None => tracing::info!("no longer throttled"),
                }
                *held = reason;
            }
        }
    }
}

/// Asks `query` on `url` every [`THROTTLE_EVERY`] and records what it says in `health`, until
/// the returned task is aborted. Until the first answer the step counts as throttled.
pub(crate) fn watch_throttle_query(
    url: DbUrl,
    query: String,
    health: Arc<Health>,
) -> JoinHandle<()> {
    health.set(Some("waiting for throttle_query's first answer".into()));
    tokio::spawn(async move {
        let mut conn: Option<Box<dyn Conn>> = None;
        loop {
            let answer = tokio::time::timeout(THROTTLE_TIMEOUT, ask(&url, &query, &mut conn)).await;
            let reason = match answer {
                Ok(Ok(false)) => None,
                Ok(Ok(true)) => Some("throttle_query returned true".to_string()),
                Ok(Err(e)) => {
                    conn = None;
                    Some(format!("throttle_query failed, so the step waits: {e}"))
                }
                Err(_) => {
                    conn = None;
                    Some(format!(
                        "throttle_query gave no answer within {}s, so the step waits",
                        THROTTLE_TIMEOUT.as_secs()
                    ))
                }
            };
            health.set(reason);
            tokio::time::sleep(THROTTLE_EVERY).await;
        }
    })
}

/// Runs the throttle query once, connecting first when needed.
async fn ask(
    url: &DbUrl,
    query: &str,
    conn: &mut Option<Box<dyn Conn>>,
) -> godwit_driver::Result<bool> {
    if conn.is_none() {
        *conn = Some(godwit_db::connect(url, &Default::default()).await?);
    }
    let Some(c) = conn.as_mut() else {
        return Ok(true);
    };
    let rows = c.query(query, &[]).await?;
    let first = rows
        .into_iter()
        .next()
        .and_then(|r| r.into_values().into_iter().next());
    Ok(first.is_some_and(|v| is_true(&v)))
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
}
