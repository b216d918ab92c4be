//! The HTTP endpoint: `GET /metrics` on the address given to `--metrics`.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use axum::extract::State;
use axum::http::header;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::text::CONTENT_TYPE;

/// Why the metrics endpoint could not listen on its address.
#[derive(Debug)]
pub struct ListenError {
    addr: String,
    source: io::Error,
}

impl ListenError {
    /// The address as it was given.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot listen on {:?}: {}", self.addr, self.source)?;
        if self.source.kind() == io::ErrorKind::InvalidInput {
            f.write_str(" (expected HOST:PORT, such as 127.0.0.1:9478 or 0.0.0.0:9478)")?;
        }
        Ok(())
    }
}

impl std::error::Error for ListenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Listens on `addr` (`HOST:PORT`; a host name is looked up), before any work starts, so that
/// an address that cannot be had stops the command at once.
///
/// # Errors
/// When `addr` is not `HOST:PORT`, its host is unknown, or the port is taken or not allowed.
pub async fn listen(addr: &str) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr).await.map_err(|source| ListenError {
        addr: addr.to_string(),
        source,
    })
}

/// Serves `metrics` at `/metrics` on `listener` until the process ends; every other path is
/// 404. Each connection is a task of its own, so a slow or stuck client holds up nothing else.
pub fn serve(listener: TcpListener, metrics: Metrics) -> JoinHandle<()> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(metrics);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(?addr, error = %e, "the metrics endpoint stopped");
        }
    })
}

async fn scrape(
    State(metrics): State<Metrics>,
) -> ([(header::HeaderName, &'static str); 1], String) {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render())
}
