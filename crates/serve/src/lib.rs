//! `godwit serve`: a web dashboard and a JSON API over a state database.
//!
//! Everything shown is read from the state tables, the same way `godwit status` reads them, so
//! the dashboard shows every run in the database whichever machines work on them. It is
//! read-only unless started with a token: control (pause, resume, cancel, retry) then needs
//! `Authorization: Bearer TOKEN`. The page, its script and its style are compiled into the
//! binary ([`page`]); nothing is fetched from anywhere else at run time.
//!
//! The parts: [`api`] answers the JSON routes, [`store`] keeps the connection to the state
//! database, [`page`] serves the embedded assets.
#![deny(missing_docs)]

mod api;
mod page;
mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use godwit::driver::DbUrl;

/// What `godwit serve` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// The state database whose runs are shown.
    pub database: DbUrl,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The token that control requests must carry; `None`: read-only.
    pub token: Option<String>,
}

/// A dashboard bound to its address, not yet serving.
pub struct Server {
    listener: tokio::net::TcpListener,
    app: Router,
}

/// Binds the dashboard's address, so that a port already taken is an error before anything
/// else happens.
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(options: Options) -> std::io::Result<Server> {
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    let loopback = options.listen.ip().is_loopback();
    let shared = Arc::new(api::Shared {
        store: store::Store::new(options.database),
        token: options.token,
    });
    let app = Router::new()
        .route("/", get(page::index))
        .route("/app.js", get(page::script))
        .route("/style.css", get(page::style))
        .route("/api/info", get(api::info))
        .route("/api/runs", get(api::runs))
        .route("/api/runs/{plan}", get(api::run))
        .route("/api/runs/{plan}/throughput", get(api::throughput))
        .route("/api/runs/{plan}/errors", get(api::errors))
        .route("/api/runs/{plan}/dead-letters", get(api::dead_letters))
        .route("/api/runs/{plan}/{action}", post(api::control))
        .fallback(api::not_found)
        .with_state(shared);
    let app = if loopback {
        app.layer(axum::middleware::from_fn(api::loopback_host))
    } else {
        app
    };
    Ok(Server { listener, app })
}

impl Server {
    /// The address bound (the port chosen, when asked for port 0).
    ///
    /// # Errors
    /// When the socket cannot tell.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` completes; requests in flight then finish.
    ///
    /// # Errors
    /// When accepting connections fails for good.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, self.app)
            .with_graceful_shutdown(shutdown)
            .await
    }
}
