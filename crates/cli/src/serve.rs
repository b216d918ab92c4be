//! `godwit serve`: the web dashboard (crates/serve) bound to the command line.

use std::net::SocketAddr;

use godwit::driver::DbUrl;

use crate::args::ServeArgs;
use crate::exit;

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<u8> {
    let database = DbUrl::new(args.database);
    let token = match &args.token_file {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Some(text.trim().to_string()),
            Ok(_) => {
                eprintln!("error: the token file {} is empty", path.display());
                return Ok(exit::INVALID);
            }
            Err(e) => {
                eprintln!("error: cannot read the token file {}: {e}", path.display());
                return Ok(exit::INVALID);
            }
        },
    };
    let control = token.is_some();
    let server = match godwit_serve::bind(godwit_serve::Options {
        database: database.clone(),
        listen: args.listen,
        token,
    })
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return Ok(exit::INVALID);
        }
    };
    let addr = server.local_addr().unwrap_or(args.listen);
    // Said at once, but not fatal: the dashboard shows the error until the database answers.
    if let Err(e) = godwit::connect(&database).await {
        eprintln!("warning: cannot reach the state database {database} yet: {e}");
    }
    let mode = if control {
        "pause, resume, cancel and retry with the token"
    } else {
        "read-only"
    };
    eprintln!("dashboard for {database} on http://{addr}/ ({mode})");
    if !is_loopback(addr) {
        eprintln!(
            "note: {addr} is reachable from other machines: anyone who reaches it sees the runs"
        );
    }
    server.run(shutdown()).await?;
    Ok(exit::DONE)
}

fn is_loopback(addr: SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
