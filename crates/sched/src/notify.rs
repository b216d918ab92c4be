//! Notifications (`notify`): a JSON message posted to each address when the run is done or
//! failed, and when it has stayed throttled for `notify_throttled_after` (again after each such
//! while). The message's `text` field reads well in Slack and the like; the other fields are
//! for programs.
//!
//! One process sends each message for the whole fleet: the one whose state change ended the
//! run ([`StateStore::set_run_state`] says which), and for a throttle the one that wins
//! [`StateStore::claim_throttle_notice`]. Delivery runs on tasks of its own and is retried with
//! backoff, so the run never waits for a slow or broken webhook; a process whose run has ended
//! waits at most [`FLUSH`] for its last messages before it exits.
//!
//! A webhook's address often carries its secret (Slack's does): logs name only its scheme and
//! host.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use godwit_driver::thousands;
use godwit_plan::Plan;
use godwit_state::{RunStatus, StateStore};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::ctx::{RunCtx, StepCtx};

/// Attempts per message and address.
const ATTEMPTS: u32 = 4;
/// The wait before the second attempt; it doubles after each.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest one attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process whose run has ended waits for its messages to go out.
pub(crate) const FLUSH: Duration = Duration::from_secs(20);
/// How often the throttle watch looks.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Sends the plan's notifications.
pub(crate) struct Notifier {
    plan: String,
    urls: Vec<String>,
    client: reqwest::Client,
    sending: Mutex<JoinSet<()>>,
}

impl Notifier {
    /// The notifier of `plan`; `None` when it names no address.
    pub(crate) fn new(plan: &Plan) -> Option<Arc<Notifier>> {
        if plan.notify.is_empty() {
            return None;
        }
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .user_agent(concat!("godwit/", env!("CARGO_PKG_VERSION")))
            .build();
        let client = match client {
            Ok(client) => client,
            Err(e) => {
                // Without a client no message can go out: say so once rather than lose them
                // all in silence (the run itself goes on).
                tracing::error!(error = %e, "notifications are off: the HTTP client cannot start");
                return None;
            }
        };
        Some(Arc::new(Notifier {
            plan: plan.name.clone(),
            urls: plan.notify.clone(),
            client,
            sending: Mutex::new(JoinSet::new()),
        }))
    }

    /// Posts `message` to every address, in the background.
    fn send(&self, message: Value) {
        let Ok(mut sending) = self.sending.lock() else {
            return;
        };
        for url in &self.urls {
            let (client, url, message) = (self.client.clone(), url.clone(), message.clone());
            sending.spawn(deliver(client, url, message));
        }
    }

    /// Says that the run ended as `status` shows it (done or failed).
    pub(crate) fn ended(&self, status: Option<&RunStatus>, state: &str, error: Option<&str>) {
        let elapsed = status.map_or(0.0, |s| s.elapsed_seconds);
        let rows: i64 = status.map_or(0, |s| s.steps.iter().map(|st| st.rows_done).sum());
        let text = match error {
            None => format!(
                "godwit: {} is {state} in {}: {} rows",
                self.plan,
                seconds(elapsed),
                thousands(rows)
            ),
            Some(e) => format!(
                "godwit: {} {state} after {}: {e}",
                self.plan,
                seconds(elapsed)
            ),
        };
        self.send(json!({
            "text": text, "plan": self.plan, "event": state, "state": state,
            "elapsed_seconds": elapsed, "rows_done": rows, "error": error,
            "steps": status.map(|s| &s.steps),
        }));
    }

    fn throttled(&self, since: Duration, reasons: &str) {
        let text = format!(
            "godwit: {} has been throttled for {}: {reasons}",
            self.plan,
            seconds(since.as_secs_f64())
        );
        self.send(json!({
            "text": text, "plan": self.plan, "event": "throttled", "state": "running",
            "throttled_seconds": since.as_secs_f64().round(), "throttled": reasons,
        }));
    }

    /// Waits until every message sent has been delivered or given up, for at most `limit`.
    pub(crate) async fn flush(&self, limit: Duration) {
        let mut pending = match self.sending.lock() {
            Ok(mut s) => std::mem::take(&mut *s),
            Err(_) => return,
        };
        let all = async { while pending.join_next().await.is_some() {} };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!(
                plan = %self.plan,
                "notifications still undelivered after {}s; giving them up",
                limit.as_secs()
            );
        }
    }
}

/// Posts `message` to `url`, retrying with backoff; gives up after [`ATTEMPTS`].
async fn deliver(client: reqwest::Client, url: String, message: Value) {
    let shown = shown(&url);
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let why = match client.post(&url).json(&message).send().await {
            Ok(answer) if answer.status().is_success() => {
                tracing::debug!(to = %shown, "notification delivered");
                return;
            }
            Ok(answer) => format!("answered {}", answer.status().as_u16()),
            // Without the URL, which reqwest would print with its secret.
            Err(e) => e.without_url().to_string(),
        };
        if attempt == ATTEMPTS {
            tracing::warn!(to = %shown, "notification not delivered after {ATTEMPTS} attempts: {why}");
            return;
        }
        tracing::info!(to = %shown, attempt, "notification not delivered ({why}); trying again");
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
}

/// `scheme://host[:port]/…`: an address as logs may show it.
fn shown(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}/…", u.scheme(), u.host_str().unwrap_or("?"))
        }
        Err(_) => "an address that does not parse".to_string(),
    }
}

/// Watches the run's steps while it goes: once some step has been throttled without a break
/// for `after`, one process of the fleet says so, and again after each further `after`.
pub(crate) async fn watch_throttle(
    notifier: Arc<Notifier>,
    ctx: Arc<RunCtx>,
    steps: Vec<Arc<StepCtx>>,
    after: Duration,
) {
    let mut since: Option<Instant> = None;
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let reasons: Vec<String> = steps
            .iter()
            .filter_map(|s| s.pace().throttled(ctx.pace()))
            .collect();
        if reasons.is_empty() {
            since = None;
            continue;
        }
        let started = *since.get_or_insert_with(Instant::now);
        if started.elapsed() < after {
            continue;
        }
        if claim(ctx.state(), ctx.name(), after).await {
            let mut unique = reasons.clone();
            unique.dedup();
            notifier.throttled(started.elapsed(), &unique.join("; "));
        }
        // Whether this process or another said it: the next word is due after another while.
        since = Some(Instant::now());
    }
}

async fn claim(state: &StateStore, run: &str, every: Duration) -> bool {
    match state.claim_throttle_notice(run, every).await {
        Ok(won) => won,
        Err(e) => {
            tracing::debug!(error = %e, "could not claim the throttle notification");
            false
        }
    }
}

fn seconds(s: f64) -> String {
    if s < 60.0 {
        return format!("{s:.1}s");
    }
    let s = s.round() as u64;
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, sec) => format!("{m}m {sec}s"),
        (h, m, _) => format!("{h}h {m}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_shown_without_their_secret() {
        assert_eq!(
            shown("https://hooks.slack.com/services/T0/B0/XXXXSECRET"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            shown("http://u:pw@127.0.0.1:9000/hook?k=s"),
            "http://127.0.0.1:9000/…"
        );
    }

    #[test]
    fn figures_read_well() {
        assert_eq!(thousands(666_666), "666,666");
        assert_eq!(thousands(12), "12");
        assert_eq!(seconds(40.24), "40.2s");
        assert_eq!(seconds(3725.0), "1h 2m");
        assert_eq!(seconds(905.0), "15m 5s");
    }
}
