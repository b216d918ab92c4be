//! The plans in `examples/` run as the README says, against the real servers, and do what
//! their comments promise.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::{isolated_db, text, Backend, TestDb};
use godwit_driver::Value;

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// `godwit ARGS…` with `vars` set, as a user would run an example.
fn godwit_with(vars: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = common::godwit();
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.args(args).output().expect("run godwit")
}

fn ok(out: &Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: stdout {} stderr {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn texts(rows: Vec<Vec<Value>>) -> Vec<Vec<String>> {
    rows.into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| match v {
                    Value::Null => "NULL".to_string(),
                    Value::Text(s) => s,
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_dates_become_periods_and_unreadable_ones_dead_letters() {
    let db = isolated_db(Backend::Postgres).await;
    let plan = example("publication-dates.toml");
    let plan = plan.to_str().unwrap();
    let vars = [("BOOKS_DATABASE_URL", db.url.as_str())];
    ok(&godwit_with(&vars, &["run", plan, "--quiet"]), "run");

    // The first ten books carry each of the ten written forms once.
    let got = texts(
        db.query(
            "SELECT details->>'published', COALESCE((details->'publicationPeriod')::text, 'NULL') \
             FROM books WHERE id <= 10 ORDER BY id",
        )
        .await,
    );
    let period = |start: i64, end: i64, approximate: bool| {
        format!(r#"{{"end": {end}, "start": {start}, "approximate": {approximate}}}"#)
    };
    let expected = [
        ("c1950", period(1950, 1950, true)),
        ("[1999?]", period(1999, 1999, true)),
        ("1990-1995", period(1990, 1995, false)),
        ("ca. 1820", period(1820, 1820, true)),
        ("2001.", period(2001, 2001, false)),
        ("1850s", period(1850, 1859, false)),
        ("not dated", "NULL".to_string()),
        ("[c1972]", period(1972, 1972, true)),
        ("1999-01", period(1999, 1999, false)),
        ("1987", period(1987, 1987, false)),
    ];
    for (row, (published, period)) in got.iter().zip(expected) {
        assert_eq!(row, &vec![published.to_string(), period], "{published}");
    }

    // One book in ten says "not dated": skipped, counted, listed with its error and row.
    let out = godwit_with(&vars, &["status", plan, "--json"]);
    ok(&out, "status");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let step = &status["steps"][1];
    assert_eq!(step["name"], "publication-period");
    assert_eq!(step["rows_skipped"], 1000, "{status}");
    let out = godwit_with(&vars, &["dead-letters", plan, "--json"]);
    ok(&out, "dead-letters");
    let letters: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(letters.len(), 1000);
    let first = &letters[0];
    assert!(
        first["error"]
            .as_str()
            .unwrap()
            .contains("publication_period.lua:"),
        "{first}"
    );
    assert!(first["error"].as_str().unwrap().contains("not dated"));
    assert_eq!(first["row"]["details"]["published"], "not dated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_history_is_the_join_of_orders_and_items_and_verifies() {
    let db = isolated_db(Backend::Postgres).await;
    let plan = example("order-history.toml");
    let plan = plan.to_str().unwrap();
    let vars = [("SHOP_DATABASE_URL", db.url.as_str())];
    ok(&godwit_with(&vars, &["run", plan, "--quiet"]), "run");

    let expected = db
        .scalar(
            "SELECT COUNT(*) FROM orders o JOIN order_items i ON i.order_id = o.id \
             WHERE o.status IN ('paid', 'shipped')",
        )
        .await;
    assert!(expected > 0);
    let wrong = db
        .scalar(
            "SELECT COUNT(*) FROM (\
               SELECT i.id, o.id, o.status, i.sku, i.qty, i.qty * i.price, o.created_at \
               FROM orders o JOIN order_items i ON i.order_id = o.id \
               WHERE o.status IN ('paid', 'shipped') \
             EXCEPT SELECT item_id, order_id, status, sku, qty, amount, ordered_at \
               FROM order_history) d",
        )
        .await;
    assert_eq!(wrong, 0, "every history row is the join's");
    assert_eq!(
        db.scalar("SELECT COUNT(*) FROM order_history").await,
        expected
    );
    ok(&godwit_with(&vars, &["verify", plan]), "verify");

    // A changed history row is found and named.
    db.exec("UPDATE order_history SET qty = qty + 1 WHERE item_id = (SELECT MIN(item_id) FROM order_history)")
        .await;
    let out = godwit_with(&vars, &["verify", plan]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("qty: source"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_shop_is_reshaped_into_postgres() {
    let source = TestDb::new(Backend::MySql).await;
    let script = std::fs::read_to_string(example("sql/shop-mariadb.sql")).expect("the SQL file");
    let mut conn = source.conn().await;
    for statement in script.split(";\n").map(str::trim).filter(|s| !s.is_empty()) {
        let statement: String = statement
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        if statement.trim().is_empty() {
            continue;
        }
        conn.execute_unprepared(&statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let target = isolated_db(Backend::Postgres).await;
    let plan = example("shop-to-postgres.toml");
    let plan = plan.to_str().unwrap();
    let vars = [
        ("SHOP_MARIADB_URL", source.url.as_str()),
        ("SHOP_POSTGRES_URL", target.url.as_str()),
    ];
    ok(&godwit_with(&vars, &["run", plan, "--quiet"]), "run");
    ok(&godwit_with(&vars, &["verify", plan]), "verify");

    let customer = texts(
        target
            .query(
                "SELECT first_name, last_name, email, newsletter::text, signed_up::text \
                 FROM customers WHERE id IN (1, 50) ORDER BY id",
            )
            .await,
    );
    assert_eq!(
        customer,
        vec![
            vec![
                "José",
                "Müller",
                "customer1@example.com",
                "true",
                "2015-03-01 13:00:00+00"
            ],
            // Every 50th customer signed up on a zero date: NULL, as `convert` says.
            vec!["Ana", "Ó Briain", "customer50@example.com", "false", "NULL"],
        ]
    );
    assert_eq!(
        target
            .scalar("SELECT COUNT(*) FROM customers WHERE signed_up IS NULL")
            .await,
        40
    );
    assert_eq!(
        target
            .scalar("SELECT price_cents FROM products WHERE sku = 'SKU-00001'")
            .await,
        249
    );
    let attributes = texts(
        target
            .query("SELECT attributes::text FROM products WHERE sku = 'SKU-00003'")
            .await,
    );
    assert_eq!(
        attributes[0][0],
        r#"{"extra": {}, "sizes": ["S", "M", "L"], "colour": "red"}"#
    );
    assert_eq!(target.scalar("SELECT COUNT(*) FROM orders").await, 6000);
    assert_eq!(
        target
            .scalar("SELECT COUNT(*) FROM orders WHERE placed IS NULL")
            .await,
        6000 / 97
    );

    // Without `convert`, a zero date stops the copy instead of becoming NULL silently.
    let strict = target.plan(
        "strict.toml",
        &std::fs::read_to_string(plan)
            .unwrap()
            .replace("name = \"shop-to-postgres\"", "name = \"shop-strict\"")
            .replace("convert = { placed = \"null\" }", "")
            .replace(
                "CREATE TABLE IF NOT EXISTS orders (",
                "CREATE TABLE IF NOT EXISTS orders_strict (",
            )
            .replace("into = \"orders\"", "into = \"orders_strict\""),
    );
    let out = godwit_with(&vars, &["run", strict.to_str().unwrap(), "--quiet"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("zero date"), "{stderr}");
    assert!(stderr.contains("column placed"), "{stderr}");
}
