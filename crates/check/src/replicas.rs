//! The replicas a run watches for lag (`replicas`, `max_replica_lag`): which databases can
//! tell it, and, for `check`, whether each replica answers as one. A run does not ask them
//! before it starts: a replica that cannot answer throttles the run until it does.

use std::time::Duration;

use godwit_driver::{Conn, ConnectOptions, DbUrl, Dialect, Replication};
use godwit_plan::{Place, Plan};

use crate::judgement::{Depth, Judgement};

/// How long `check` waits for a replica to connect and tell its lag.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(10);

/// Reports replicas on a database that has none, and `max_replica_lag` without `replicas`
/// where the plan's database cannot tell its replicas' lag (only PostgreSQL's can). At
/// [`Depth::Full`], also asks each replica (or, without a list, the plan's database) for its
/// lag, and reports one that cannot be reached or is not a replica.
pub(crate) async fn replicas_ok(
    judgement: &mut Judgement,
    plan: &Plan,
    primary: &mut dyn Conn,
    depth: Depth,
) {
    if plan.replica_lag_limit().is_none() {
        return;
    }
    let dialect = primary.dialect();
    if dialect == Dialect::Sqlite {
        let key = if plan.replicas.is_empty() {
            "max_replica_lag"
        } else {
            "replicas"
        };
        judgement.plan_problem(
            plan,
            "no-replicas",
            (key, None),
            &format!(
                "`{key}` cannot work on SQLite, which has no replicas; remove `replicas` and `max_replica_lag`"
            ),
        );
        return;
    }
    if plan.replicas.is_empty() && dialect != Dialect::Postgres {
        judgement.plan_problem(
            plan,
            "replicas-not-listed",
            ("max_replica_lag", None),
            &format!(
                "`max_replica_lag` without `replicas` reads the replicas' lag from the plan's database, which only PostgreSQL tells; {} tells a replica's lag on the replica itself, so list the replicas to watch: replicas = [\"mysql://…\"]",
                dialect.name()
            ),
        );
        return;
    }
    if depth != Depth::Full {
        return;
    }
    if plan.replicas.is_empty() {
        let asked = tokio::time::timeout(REPLICA_TIMEOUT, primary.primary_lag()).await;
        tell(judgement, plan, None, asked);
        return;
    }
    let written: Vec<Place<'_>> = plan
        .written_urls
        .iter()
        .filter(|u| u.key == "replicas")
        .map(|u| Place {
            file: &plan.path,
            location: u.location,
        })
        .collect();
    for (i, url) in plan.replicas.iter().enumerate() {
        let url = DbUrl::new(url.clone());
        let asked = tokio::time::timeout(REPLICA_TIMEOUT, ask_replica(&url)).await;
        tell(
            judgement,
            plan,
            Some((&url, written.get(i).copied())),
            asked,
        );
    }
}

async fn ask_replica(url: &DbUrl) -> godwit_driver::Result<Replication> {
    let mut conn = godwit_db::connect(url, &ConnectOptions::default()).await?;
    conn.replica_lag().await
}

/// Reports what a replica (`Some`, with where its URL is written) or the plan's database as a
/// primary (`None`) answered, when it is not a lag.
fn tell(
    judgement: &mut Judgement,
    plan: &Plan,
    replica: Option<(&DbUrl, Option<Place<'_>>)>,
    asked: Result<godwit_driver::Result<Replication>, tokio::time::error::Elapsed>,
) {
    let (key, place, server) = match replica {
        Some((url, place)) => ("replicas", place, format!("the replica {url}")),
        None => (
            "max_replica_lag",
            None,
            "the plan's database (the primary)".to_string(),
        ),
    };
    match asked {
        Ok(Ok(Replication::Lag(_))) => {}
        Ok(Ok(Replication::Unknown(why))) => judgement.plan_problem(
            plan,
            "not-a-replica",
            (key, place),
            &format!("{server} {why}; a run would wait until it tells its lag"),
        ),
        Ok(Err(e)) => judgement.plan_database_problem(
            plan,
            (key, place),
            &format!("cannot read the replica lag from {server}"),
            e,
        ),
        Err(_) => judgement.plan_database_problem(
            plan,
            (key, place),
            &format!("cannot read the replica lag from {server}"),
            godwit_driver::Error::new(
                godwit_driver::ErrorKind::Timeout,
                None,
                format!("no answer within {}s", REPLICA_TIMEOUT.as_secs()),
            ),
        ),
    }
}
