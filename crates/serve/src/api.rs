//! The JSON API: runs in the `status --json` shape, their throughput over time, the batches
//! that met errors, dead letters, and control behind a bearer token.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use godwit::state::{Control, StateStore};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::store::Store;

/// What every request shares.
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) token: Option<String>,
}

type Ctx = State<Arc<Shared>>;

/// The most rows a list answers with, whatever `limit` asks.
const MAX_LIMIT: u64 = 1_000;

/// An answer with an error message: `{"error": "..."}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// The state database could not answer. Its errors name URLs redacted.
fn unavailable(e: godwit::driver::Error) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot read the state database: {e}"),
    )
}

fn no_run(plan: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no run of {plan:?} is stored in this state database"),
    )
}

/// The state tables, or the answer to give when there are none (`empty`) or they cannot be
/// read.
async fn reader(
    shared: &Shared,
    empty: impl FnOnce() -> Response,
) -> Result<Arc<StateStore>, Response> {
    match shared.store.reader().await {
        Ok(Some(store)) => Ok(store),
        Ok(None) => Err(empty()),
        Err(e) => Err(unavailable(e)),
    }
}

pub(crate) async fn info(State(shared): Ctx) -> Response {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "database": shared.store.url().to_string(),
        "control": shared.token.is_some(),
    }))
    .into_response()
}

pub(crate) async fn runs(State(shared): Ctx) -> Response {
    let store = match reader(&shared, || Json(json!([])).into_response()).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    let names = match store.run_names().await {
        Ok(n) => n,
        Err(e) => return unavailable(e),
    };
    let mut runs = Vec::with_capacity(names.len());
    for name in names {
        match store.status(&name).await {
            Ok(Some(status)) => runs.push(status),
            // Deleted between the two reads.
            Ok(None) => {}
            Err(e) => return unavailable(e),
        }
    }
    Json(runs).into_response()
}

pub(crate) async fn run(State(shared): Ctx, Path(plan): Path<String>) -> Response {
    let store = match reader(&shared, || no_run(&plan)).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    match store.status(&plan).await {
        Ok(Some(status)) => Json(status).into_response(),
        Ok(None) => no_run(&plan),
        Err(e) => unavailable(e),
    }
}

pub(crate) async fn throughput(State(shared): Ctx, Path(plan): Path<String>) -> Response {
    let store = match reader(&shared, || no_run(&plan)).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    match store.throughput(&plan).await {
        Ok(t) => Json(t).into_response(),
        Err(e) => unavailable(e),
    }
}

#[derive(Deserialize)]
pub(crate) struct Limit {
    limit: Option<u64>,
}

impl Limit {
    fn get(&self) -> u64 {
        self.limit.unwrap_or(50).min(MAX_LIMIT)
    }
}

pub(crate) async fn errors(
    State(shared): Ctx,
    Path(plan): Path<String>,
    Query(limit): Query<Limit>,
) -> Response {
    let store = match reader(&shared, || no_run(&plan)).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    match store.batch_errors(&plan, limit.get()).await {
        Ok(errors) => Json(errors).into_response(),
        Err(e) => unavailable(e),
    }
}

pub(crate) async fn dead_letters(
    State(shared): Ctx,
    Path(plan): Path<String>,
    Query(limit): Query<Limit>,
) -> Response {
    let store = match reader(&shared, || no_run(&plan)).await {
        Ok(s) => s,
        Err(answer) => return answer,
    };
    match store.dead_letters(&plan, None, Some(limit.get())).await {
        Ok(letters) => {
            let letters: Vec<Value> = letters
                .into_iter()
                .map(|l| {
                    json!({
                        "step": l.step, "batch": l.batch, "key": l.key, "error": l.error,
                        "row": l.row, "created_ms": l.created_ms,
                    })
                })
                .collect();
            Json(letters).into_response()
        }
        Err(e) => unavailable(e),
    }
}

/// `POST /api/runs/{plan}/{action}`: pause, resume, cancel or retry, with the token.
pub(crate) async fn control(
    State(shared): Ctx,
    Path((plan, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let action = match action.as_str() {
        "pause" => Control::Pause,
        "resume" => Control::Resume,
        "cancel" => Control::Cancel,
        "retry" => Control::Retry,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no action {other:?}: pause, resume, cancel or retry"),
            )
        }
    };
    let Some(token) = shared.token.as_deref() else {
        return error(
            StatusCode::FORBIDDEN,
            "this dashboard is read-only: start `godwit serve` with --token-file to allow control",
        );
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !given.is_some_and(|g| same(g.trim().as_bytes(), token.as_bytes())) {
        let mut answer = error(
            StatusCode::UNAUTHORIZED,
            "control needs `Authorization: Bearer TOKEN` with the token of --token-file",
        );
        answer.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return answer;
    }
    let before = match godwit::control_run(shared.store.url(), &plan, action).await {
        Ok(Some(before)) => before,
        Ok(None) => return no_run(&plan),
        Err(e) => return unavailable(e),
    };
    let reply = godwit::control_reply(&plan, action, before);
    tracing::info!(plan = %plan, applied = reply.applied, "{}", reply.message);
    let status = if reply.applied {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    };
    (
        status,
        Json(json!({ "applied": reply.applied, "message": reply.message })),
    )
        .into_response()
}

/// On a loopback address, answers only requests addressed to a loopback name: a page of another
/// site whose name was made to point at 127.0.0.1 (DNS rebinding) sends its own name as `Host`
/// and is refused, so it cannot read the dashboard from the user's browser.
pub(crate) async fn loopback_host(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if is_loopback_host(host) {
        next.run(request).await
    } else {
        error(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this dashboard listens on loopback and answers only http://127.0.0.1, \
                 http://[::1] or http://localhost, not {host:?}"
            ),
        )
    }
}

/// Whether `host` (a `Host` header: a name or address, maybe with a port) names this machine's
/// loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub(crate) async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such page")
}

/// Compares two secrets in time that depends on their lengths only, not on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::same;

    #[test]
    fn only_loopback_names_are_loopback_hosts() {
        use super::is_loopback_host as ok;
        assert!(ok("127.0.0.1:8080") && ok("localhost:8080") && ok("LOCALHOST") && ok("[::1]:80"));
        assert!(ok("127.0.0.2"));
        assert!(!ok("evil.example:8080") && !ok("localhost.evil.example") && !ok(""));
        assert!(!ok("10.0.0.1:8080") && !ok("[2001:db8::1]:80"));
    }

    #[test]
    fn tokens_match_only_exactly() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
