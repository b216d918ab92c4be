//! `godwit check`'s findings against a corpus of slow and good plans on real databases
//! (issue 15): each slow step is flagged with its code and nothing else; no good step is
//! flagged at all. The tables hold 200,000 rows, enough for each planner to plan as it would
//! on a production table (see docs/foresight.md for what each code means).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{own_db, path_str, run_cmd, text, Backend, OwnDb};
use serde_json::Value as Json;

const ROWS: i64 = 200_000;

/// Builds the corpus's tables in `db`: customers (two indexes on `phone`, none on
/// `legacy_id`), orders (no index on `customer_id`) and an indexed copy, a parent table whose
/// child's foreign key has no index, a table with a row trigger, and a small prefix table.
async fn corpus(db: &OwnDb) {
    let n = ROWS;
    let statements: Vec<String> = match db.backend {
        Backend::Postgres => vec![
            "CREATE TABLE fx_customers (id bigint PRIMARY KEY, legacy_id bigint, phone text, email text, note text)".into(),
            format!("INSERT INTO fx_customers SELECT g, g + 1000000, '0' || (900000000 + g), 'u' || g || '@x.org', NULL FROM generate_series(1, {n}) g"),
            "CREATE TABLE fx_orders (id bigint PRIMARY KEY, customer_id bigint, total int)".into(),
            format!("INSERT INTO fx_orders SELECT g, (g * 7919) % {n} + 1, g % 1000 FROM generate_series(1, {n}) g"),
            "CREATE TABLE fx_parent (id bigint PRIMARY KEY)".into(),
            "INSERT INTO fx_parent SELECT g FROM generate_series(1, 50000) g".into(),
            "CREATE TABLE fx_child (id bigint PRIMARY KEY, parent_id bigint REFERENCES fx_parent (id))".into(),
            format!("INSERT INTO fx_child SELECT g, g % 50000 + 1 FROM generate_series(1, {n}) g"),
            "CREATE TABLE fx_tracked (id bigint PRIMARY KEY, v int)".into(),
            "INSERT INTO fx_tracked SELECT g, 0 FROM generate_series(1, 20000) g".into(),
            "CREATE FUNCTION fx_touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.v := NEW.v + 1; RETURN NEW; END $$".into(),
            "CREATE TRIGGER fx_tracked_touch BEFORE UPDATE ON fx_tracked FOR EACH ROW EXECUTE FUNCTION fx_touch()".into(),
            "CREATE TABLE fx_prefixes (old text PRIMARY KEY, new text)".into(),
            "INSERT INTO fx_prefixes SELECT '0' || (900 + g), '0' || (300 + g) FROM generate_series(0, 99) g".into(),
            "CREATE TABLE fx_audit (id bigint PRIMARY KEY, customer_id bigint, total int)".into(),
            "CREATE FUNCTION fx_stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.total := NEW.total + 1; RETURN NEW; END $$".into(),
            "CREATE TRIGGER fx_audit_stamp BEFORE INSERT ON fx_audit FOR EACH ROW EXECUTE FUNCTION fx_stamp()".into(),
        ],
        Backend::MySql => vec![
            "CREATE TABLE fx_customers (id BIGINT PRIMARY KEY, legacy_id BIGINT, phone VARCHAR(20), email VARCHAR(64), note VARCHAR(64))".into(),
            format!("INSERT INTO fx_customers SELECT seq, seq + 1000000, CONCAT('0', 900000000 + seq), CONCAT('u', seq, '@x.org'), NULL FROM seq_1_to_{n}"),
            "CREATE TABLE fx_orders (id BIGINT PRIMARY KEY, customer_id BIGINT, total INT)".into(),
            format!("INSERT INTO fx_orders SELECT seq, (seq * 7919) % {n} + 1, seq % 1000 FROM seq_1_to_{n}"),
            "CREATE TABLE fx_tracked (id BIGINT PRIMARY KEY, v INT)".into(),
            "INSERT INTO fx_tracked SELECT seq, 0 FROM seq_1_to_20000".into(),
            "CREATE TRIGGER fx_tracked_touch BEFORE UPDATE ON fx_tracked FOR EACH ROW SET NEW.v = NEW.v + 1".into(),
            "CREATE TABLE fx_prefixes (old VARCHAR(8) PRIMARY KEY, new VARCHAR(8))".into(),
            "INSERT INTO fx_prefixes SELECT CONCAT('0', 900 + seq), CONCAT('0', 300 + seq) FROM seq_0_to_99".into(),
        ],
        Backend::Sqlite => {
            let series = |limit: i64| format!("WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < {limit})");
            vec![
                "CREATE TABLE fx_customers (id INTEGER PRIMARY KEY, legacy_id INTEGER, phone TEXT, email TEXT, note TEXT)".into(),
                format!("{} INSERT INTO fx_customers SELECT n, n + 1000000, '0' || (900000000 + n), 'u' || n || '@x.org', NULL FROM g", series(n)),
                "CREATE TABLE fx_orders (id INTEGER PRIMARY KEY, customer_id INTEGER, total INTEGER)".into(),
                format!("{} INSERT INTO fx_orders SELECT n, (n * 7919) % {n} + 1, n % 1000 FROM g", series(n)),
                "CREATE TABLE fx_parent (id INTEGER PRIMARY KEY)".into(),
                format!("{} INSERT INTO fx_parent SELECT n FROM g", series(50_000)),
                "CREATE TABLE fx_child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES fx_parent (id))".into(),
                format!("{} INSERT INTO fx_child SELECT n, n % 50000 + 1 FROM g", series(n)),
                "CREATE TABLE fx_tracked (id INTEGER PRIMARY KEY, v INTEGER)".into(),
                format!("{} INSERT INTO fx_tracked SELECT n, 0 FROM g", series(20_000)),
                "CREATE TRIGGER fx_tracked_touch AFTER UPDATE ON fx_tracked FOR EACH ROW BEGIN SELECT 1; END".into(),
                "CREATE TABLE fx_prefixes (old TEXT PRIMARY KEY, new TEXT)".into(),
                format!("{} INSERT INTO fx_prefixes SELECT '0' || (899 + n), '0' || (299 + n) FROM g", series(100)),
            ]
        }
    };
    for sql in statements {
        db.exec(&sql).await;
    }
    for sql in [
        "CREATE INDEX fx_customers_phone ON fx_customers (phone)",
        "CREATE INDEX fx_customers_phone_email ON fx_customers (phone, email)",
        "CREATE TABLE fx_orders_ix AS SELECT * FROM fx_orders",
        "CREATE INDEX fx_orders_ix_customer ON fx_orders_ix (customer_id)",
    ] {
        db.exec(sql).await;
    }
    // fx_orders_ix needs a key of its own (CREATE TABLE AS copies none).
    let analyze = match db.backend {
        Backend::Postgres => "ALTER TABLE fx_orders_ix ADD PRIMARY KEY (id); VACUUM ANALYZE",
        Backend::MySql => "ALTER TABLE fx_orders_ix ADD PRIMARY KEY (id); ANALYZE TABLE fx_customers, fx_orders, fx_orders_ix, fx_tracked, fx_prefixes",
        Backend::Sqlite => "CREATE UNIQUE INDEX fx_orders_ix_id ON fx_orders_ix (id); ANALYZE",
    };
    for sql in analyze.split("; ") {
        db.exec(sql).await;
    }
}

/// A plan of `steps` (name, body) on `db`.
fn plan(db: &OwnDb, name: &str, steps: &[(&str, String)]) -> std::path::PathBuf {
    let mut text = format!("name = \"{}_{name}\"\ndatabase = \"{}\"\n", db.tag, db.url);
    for (step, body) in steps {
        text.push_str(&format!("\n[[steps]]\nname = \"{step}\"\n{body}\n"));
    }
    db.plan(&format!("{name}.toml"), &text)
}

/// A chunked SQL step's body.
fn sql_step(table: &str, sql: &str) -> String {
    format!("table = \"{table}\"\nkey = \"id\"\nsql = \"{sql}\"")
}

/// Runs `check --json` on `path`: its exit code and each step's finding codes.
fn check(
    path: &std::path::Path,
    extra: &[&str],
) -> (i32, BTreeMap<String, BTreeSet<String>>, Json) {
    let mut args = vec!["check", path_str(path), "--json"];
    args.extend_from_slice(extra);
    let out = run_cmd(&args);
    let json: Json = serde_json::from_str(&text(&out.stdout)).unwrap_or_else(|e| {
        panic!(
            "check --json printed no JSON ({e}): {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    assert_eq!(
        json["valid"], true,
        "the corpus's plans are valid: {json:#}"
    );
    let mut codes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in json["findings"].as_array().expect("findings") {
        codes
            .entry(f["step"].as_str().unwrap_or_default().to_string())
            .or_default()
            .insert(f["code"].as_str().unwrap_or_default().to_string());
    }
    (out.status.code().unwrap_or(-1), codes, json)
}

/// Every step of `expected` has exactly its codes; no other step has any.
fn assert_codes(
    got: &BTreeMap<String, BTreeSet<String>>,
    expected: &[(&str, &[&str])],
    json: &Json,
) {
    let want: BTreeMap<String, BTreeSet<String>> = expected
        .iter()
        .map(|(s, codes)| (s.to_string(), codes.iter().map(|c| c.to_string()).collect()))
        .collect();
    assert_eq!(got, &want, "findings: {:#}", json["findings"]);
    for f in json["findings"].as_array().expect("findings") {
        assert_eq!(f["severity"], "warning");
        for field in ["message", "evidence", "fix"] {
            assert!(
                f[field].as_str().is_some_and(|s| !s.is_empty()),
                "a finding without its {field}: {f:#}"
            );
        }
    }
}

/// A transform step, which `check` judges by what it writes.
fn transform_step() -> String {
    "table = \"fx_customers\"\nkey = \"id\"\ncolumns = [\"note\"]\nlua = \"function transform(row) return { note = 'n' } end\"".into()
}

/// `check` on a plan of slow steps: valid (exit 0), and exit 1 with `--deny-warnings`, as a
/// CI pipeline uses it; its codes per step and its JSON.
fn check_slow(path: &std::path::Path) -> (BTreeMap<String, BTreeSet<String>>, Json) {
    let (code, got, json) = check(path, &[]);
    assert_eq!(code, 0, "findings leave the plan valid");
    assert_eq!(check(path, &["--deny-warnings"]).0, 1);
    (got, json)
}

/// `check --deny-warnings` on a plan of good steps: nothing flagged, exit 0.
fn assert_none_flagged(path: &std::path::Path) {
    let (code, got, json) = check(path, &["--deny-warnings"]);
    assert_codes(&got, &[], &json);
    assert_eq!(code, 0);
}

/// The finding of `step` with `code`.
fn finding<'a>(json: &'a Json, step: &str, code: &str) -> &'a Json {
    json["findings"]
        .as_array()
        .and_then(|a| a.iter().find(|f| f["step"] == step && f["code"] == code))
        .unwrap_or_else(|| panic!("no {code} on {step}: {json:#}"))
}

fn fix<'a>(json: &'a Json, step: &str, code: &str) -> &'a str {
    finding(json, step, code)["fix"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_slow_plans_flagged_good_plans_not() {
    let db = own_db(Backend::Postgres).await;
    corpus(&db).await;
    let slow = plan(
        &db,
        "slow",
        &[
            ("range-on-unindexed", sql_step("fx_customers", "UPDATE fx_customers SET note = 'x' WHERE legacy_id BETWEEN :start AND :end")),
            ("correlated", sql_step("fx_customers", "UPDATE fx_customers c SET note = (SELECT count(*)::text FROM fx_orders o WHERE o.customer_id = c.id) WHERE c.id BETWEEN :start AND :end")),
            ("join-by-key", sql_step("fx_orders", "UPDATE fx_orders o SET total = length(c.email) FROM fx_customers c WHERE c.id = o.customer_id AND o.id BETWEEN :start AND :end")),
            ("churn", sql_step("fx_customers", "UPDATE fx_customers SET phone = '0' || substr(phone, 3) WHERE id BETWEEN :start AND :end")),
            ("trigger", sql_step("fx_tracked", "UPDATE fx_tracked SET v = v WHERE id BETWEEN :start AND :end")),
            ("fk", sql_step("fx_parent", "DELETE FROM fx_parent WHERE id BETWEEN :start AND :end")),
            ("offset", sql_step("fx_customers", "UPDATE fx_customers SET note = 'y' WHERE id IN (SELECT id FROM fx_customers WHERE id BETWEEN :start AND :end ORDER BY id OFFSET 10)")),
            ("ddl", "sql = \"CREATE INDEX fx_email ON fx_customers (email)\"".into()),
            ("alter", "sql = \"ALTER TABLE fx_customers ALTER COLUMN legacy_id SET NOT NULL\"".into()),
            ("drop", "sql = \"DROP INDEX CONCURRENTLY fx_customers_phone_email\"".into()),
            ("copy", "table = \"fx_orders\"\nkey = \"id\"\ninto = \"fx_audit\"".into()),
        ],
    );
    let (got, json) = check_slow(&slow);
    assert_codes(
        &got,
        &[
            ("range-on-unindexed", &["missing-index-filter"]),
            ("correlated", &["correlated-subquery"]),
            ("join-by-key", &["full-scan-join"]),
            ("churn", &["index-churn"]),
            ("trigger", &["row-triggers"]),
            ("fk", &["unindexed-foreign-key"]),
            ("offset", &["offset-pagination", "missing-index-filter"]),
            ("ddl", &["blocking-ddl"]),
            ("alter", &["blocking-ddl"]),
            ("drop", &["non-transactional"]),
            ("copy", &["row-triggers"]),
        ],
        &json,
    );
    assert!(
        fix(&json, "range-on-unindexed", "missing-index-filter")
            .contains("CREATE INDEX CONCURRENTLY ON")
            && fix(&json, "range-on-unindexed", "missing-index-filter").contains("\"legacy_id\"")
    );
    assert!(fix(&json, "correlated", "correlated-subquery").contains("\"customer_id\""));
    // The planner reads the whole customers table for a 1,000-row batch although its key is
    // indexed: the finding says so and how to make it use the index.
    let join = fix(&json, "join-by-key", "full-scan-join");
    assert!(
        join.contains("an index exists") && join.contains("random_page_cost"),
        "{join}"
    );
    assert!(fix(&json, "fk", "unindexed-foreign-key").contains("\"parent_id\""));
    assert!(fix(&json, "ddl", "blocking-ddl").starts_with("CREATE INDEX CONCURRENTLY fx_email"));
    let churn = &finding(&json, "churn", "index-churn")["message"];
    assert!(
        churn.as_str().unwrap_or_default().contains("2 indexes"),
        "{churn}"
    );

    // `--deny-warnings`, for CI pipelines: exit 1 on any warning.

    let good = plan(
        &db,
        "good",
        &[
            ("phones", sql_step("fx_customers", "UPDATE fx_customers SET note = p.new FROM fx_prefixes p WHERE p.old = substr(fx_customers.phone, 1, 4) AND fx_customers.id BETWEEN :start AND :end AND length(fx_customers.phone) = 10")),
            ("correlated-indexed", sql_step("fx_customers", "UPDATE fx_customers c SET note = (SELECT count(*)::text FROM fx_orders_ix o WHERE o.customer_id = c.id) WHERE c.id BETWEEN :start AND :end")),
            ("one-index", sql_step("fx_orders_ix", "UPDATE fx_orders_ix SET customer_id = customer_id + 1 WHERE id BETWEEN :start AND :end")),
            ("derive", sql_step("fx_orders", "INSERT INTO fx_orders_ix (id, customer_id, total) SELECT id + 1000000, customer_id, total FROM fx_orders WHERE id BETWEEN :start AND :end ON CONFLICT DO NOTHING")),
            ("delete-child", sql_step("fx_child", "DELETE FROM fx_child WHERE id BETWEEN :start AND :end AND parent_id < 0")),
            ("transform", transform_step()),
            ("ddl", "sql = \"CREATE INDEX CONCURRENTLY IF NOT EXISTS fx_email ON fx_customers (email)\"".into()),
            ("small-ddl", "sql = \"CREATE INDEX fx_prefixes_new ON fx_prefixes (new)\"".into()),
            ("add-column", "sql = \"ALTER TABLE fx_customers ADD COLUMN IF NOT EXISTS region int DEFAULT 0\"".into()),
            ("copy", "table = \"fx_orders\"\nkey = \"id\"\ninto = \"fx_orders_ix\"".into()),
        ],
    );
    assert_none_flagged(&good);
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_slow_plans_flagged_good_plans_not() {
    let db = own_db(Backend::MySql).await;
    corpus(&db).await;
    let slow = plan(
        &db,
        "slow",
        &[
            ("range-on-unindexed", sql_step("fx_customers", "UPDATE fx_customers SET note = 'x' WHERE legacy_id BETWEEN :start AND :end")),
            ("correlated", sql_step("fx_customers", "UPDATE fx_customers c SET note = (SELECT count(*) FROM fx_orders o WHERE o.customer_id = c.id) WHERE c.id BETWEEN :start AND :end")),
            ("join-unindexed", sql_step("fx_customers", "UPDATE fx_customers c JOIN fx_orders o ON o.customer_id = c.id SET c.note = o.total WHERE c.id BETWEEN :start AND :end")),
            ("churn", sql_step("fx_customers", "UPDATE fx_customers SET phone = CONCAT('0', SUBSTRING(phone, 3)) WHERE id BETWEEN :start AND :end")),
            ("trigger", sql_step("fx_tracked", "UPDATE fx_tracked SET v = v WHERE id BETWEEN :start AND :end")),
            ("offset", sql_step("fx_customers", "INSERT INTO fx_orders_ix (id, customer_id, total) SELECT id + 1000000, id, 0 FROM fx_customers WHERE id BETWEEN :start AND :end ORDER BY id LIMIT 1000 OFFSET 10")),
            ("ddl", "sql = \"ALTER TABLE fx_customers MODIFY note VARCHAR(200)\"".into()),
        ],
    );
    let (got, json) = check_slow(&slow);
    assert_codes(
        &got,
        &[
            ("range-on-unindexed", &["missing-index-filter"]),
            ("correlated", &["correlated-subquery"]),
            ("join-unindexed", &["full-scan-join"]),
            ("churn", &["index-churn"]),
            ("trigger", &["row-triggers"]),
            ("offset", &["offset-pagination"]),
            ("ddl", &["blocking-ddl"]),
        ],
        &json,
    );
    assert!(fix(&json, "range-on-unindexed", "missing-index-filter")
        .contains("ADD INDEX (`legacy_id`)"));
    assert!(fix(&json, "correlated", "correlated-subquery").contains("`customer_id`"));
    assert!(fix(&json, "ddl", "blocking-ddl").contains("ALGORITHM=INPLACE, LOCK=NONE"));

    let good = plan(
        &db,
        "good",
        &[
            ("phones", sql_step("fx_customers", "UPDATE fx_customers c JOIN fx_prefixes p ON p.old = SUBSTRING(c.phone, 1, 4) SET c.note = p.new WHERE c.id BETWEEN :start AND :end")),
            ("correlated-indexed", sql_step("fx_customers", "UPDATE fx_customers c SET note = (SELECT count(*) FROM fx_orders_ix o WHERE o.customer_id = c.id) WHERE c.id BETWEEN :start AND :end")),
            ("join-by-key", sql_step("fx_orders", "UPDATE fx_orders o JOIN fx_customers c ON c.id = o.customer_id SET o.total = LENGTH(c.email) WHERE o.id BETWEEN :start AND :end")),
            ("transform", transform_step()),
            ("ddl", "sql = \"ALTER TABLE fx_customers ADD INDEX IF NOT EXISTS fx_email (email)\"".into()),
        ],
    );
    assert_none_flagged(&good);
    db.drop_mysql().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_slow_plans_flagged_good_plans_not() {
    let db = own_db(Backend::Sqlite).await;
    corpus(&db).await;
    let slow = plan(
        &db,
        "slow",
        &[
            ("range-on-unindexed", sql_step("fx_customers", "UPDATE fx_customers SET note = 'x' WHERE legacy_id BETWEEN :start AND :end")),
            ("correlated", sql_step("fx_customers", "UPDATE fx_customers SET note = (SELECT count(*) FROM fx_orders o WHERE o.customer_id = fx_customers.id) WHERE id BETWEEN :start AND :end")),
            ("automatic-index", sql_step("fx_customers", "UPDATE fx_customers SET note = o.total FROM fx_orders o WHERE o.customer_id = fx_customers.id AND fx_customers.id BETWEEN :start AND :end")),
            ("churn", sql_step("fx_customers", "UPDATE fx_customers SET phone = '0' || substr(phone, 3) WHERE id BETWEEN :start AND :end")),
            ("trigger", sql_step("fx_tracked", "UPDATE fx_tracked SET v = v WHERE id BETWEEN :start AND :end")),
            ("fk", sql_step("fx_parent", "DELETE FROM fx_parent WHERE id BETWEEN :start AND :end")),
            ("offset", sql_step("fx_customers", "UPDATE fx_customers SET note = 'y' WHERE id IN (SELECT id FROM fx_customers WHERE id BETWEEN :start AND :end LIMIT -1 OFFSET 10)")),
        ],
    );
    let (got, json) = check_slow(&slow);
    assert_codes(
        &got,
        &[
            ("range-on-unindexed", &["missing-index-filter"]),
            ("correlated", &["correlated-subquery"]),
            ("automatic-index", &["full-scan-join"]),
            ("churn", &["index-churn"]),
            ("trigger", &["row-triggers"]),
            ("fk", &["unindexed-foreign-key"]),
            ("offset", &["offset-pagination"]),
        ],
        &json,
    );
    assert!(fix(&json, "range-on-unindexed", "missing-index-filter").contains("(\"legacy_id\")"));
    assert!(fix(&json, "correlated", "correlated-subquery").contains("(\"customer_id\")"));
    assert!(fix(&json, "automatic-index", "full-scan-join").contains("(\"customer_id\")"));

    let good = plan(
        &db,
        "good",
        &[
            ("phones", sql_step("fx_customers", "UPDATE fx_customers SET note = (SELECT p.new FROM fx_prefixes p WHERE p.old = substr(fx_customers.phone, 1, 4)) WHERE id BETWEEN :start AND :end")),
            ("correlated-indexed", sql_step("fx_customers", "UPDATE fx_customers SET note = (SELECT count(*) FROM fx_orders_ix o WHERE o.customer_id = fx_customers.id) WHERE id BETWEEN :start AND :end")),
            ("delete-child", sql_step("fx_child", "DELETE FROM fx_child WHERE id BETWEEN :start AND :end AND parent_id < 0")),
            ("transform", transform_step()),
            ("ddl", "sql = \"CREATE INDEX IF NOT EXISTS fx_email ON fx_customers (email)\"".into()),
        ],
    );
    assert_none_flagged(&good);
}
