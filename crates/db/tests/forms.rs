//! Each backend's forms of godwit's statements, to the byte: prepared statements are cached by
//! their text, and benchmarks and plans depend on the same statements.

use godwit_db::forms;
use godwit_driver::{ColumnInfo, Conflict, Dialect, SqlForms, UpdateFromRows, Value};

/// A table's columns as `dialect`'s backend describes them: a `varchar` key, a text and a
/// decimal.
fn columns(dialect: Dialect) -> [ColumnInfo; 3] {
    let column = |name: &str, cast: &str, collation: Option<&str>| ColumnInfo {
        name: name.into(),
        data_type: String::new(),
        nullable: true,
        cast: (dialect == Dialect::Postgres).then(|| cast.to_string()),
        collation: collation
            .filter(|_| dialect == Dialect::MySql)
            .map(String::from),
    };
    [
        column("code", "pg_catalog.varchar", Some("utf8mb4_bin")),
        column("Name", "pg_catalog.text", Some("utf8mb4_bin")),
        column("amount", "pg_catalog.\"numeric\"", None),
    ]
}

fn backend(dialect: Dialect) -> &'static dyn SqlForms {
    forms(dialect).expect("every backend is built for the tests")
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

/// The update of two rows' `Name` and `amount`, and its parameters.
fn update(dialect: Dialect) -> (String, Vec<Value>) {
    let [key, name, amount] = columns(dialect);
    let update = UpdateFromRows {
        table: "my table",
        key: &key,
        columns: &[&name, &amount],
        read: None,
    };
    let rows = [
        (text("a"), vec![text("x"), Value::Decimal("1.50".into())]),
        (text("b"), vec![Value::Null, Value::Decimal("2".into())]),
    ];
    backend(dialect).update_from_rows(&update, &rows)
}

/// An optimistic update of one row's `Name`, read with `Name`, `amount` and a float `ratio`:
/// each row carries after its new value its version where the database has one, else the
/// values read.
fn checked_update(dialect: Dialect) -> (String, Vec<Value>) {
    let [key, name, amount] = columns(dialect);
    let ratio = ColumnInfo {
        name: "ratio".into(),
        data_type: "double".into(),
        ..amount.clone()
    };
    let update = UpdateFromRows {
        table: "my table",
        key: &key,
        columns: &[&name],
        read: Some(&[&name, &amount, &ratio]),
    };
    let read = match backend(dialect).row_version() {
        Some(_) => vec![text("731")],
        None => vec![text("w"), Value::Decimal("1.50".into()), Value::Float(0.5)],
    };
    let rows = [(text("a"), [vec![text("x")], read].concat())];
    backend(dialect).update_from_rows(&update, &rows)
}

/// Optimistic writes: PostgreSQL compares each row's `xmin`; MySQL every column read, byte
/// for byte and NULL-safe (text converted into the column's character set first), floats,
/// dates and times as values parsed from exact text; SQLite (which never writes optimistically: `single_writer`) every column with `IS`.
/// A locked re-read names its keys as one array on PostgreSQL, a list elsewhere.
#[test]
fn optimistic_writes_check_what_was_read() {
    let (sql, params) = checked_update(Dialect::Postgres);
    assert_eq!(
        sql,
        "UPDATE \"my table\" SET \"Name\" = godwit_v.godwit_1::pg_catalog.text FROM unnest($1::text[], $2::text[], $3::text[]) AS godwit_v(godwit_k, godwit_1, godwit_version) WHERE \"code\" = godwit_v.godwit_k::pg_catalog.varchar AND xmin = godwit_v.godwit_version::xid"
    );
    assert_eq!(
        params,
        [
            array(&[Some("a")]),
            array(&[Some("x")]),
            array(&[Some("731")])
        ]
    );
    assert_eq!(backend(Dialect::Postgres).row_version(), Some("xmin::text"));
    let (sql, params) = checked_update(Dialect::MySql);
    assert_eq!(
        sql,
        "UPDATE `my table` JOIN (SELECT ? AS godwit_k, ? AS godwit_1, ? AS godwit_read_1, ? AS godwit_read_2, ? AS godwit_read_3) AS godwit_v ON `my table`.`code` = CONVERT(godwit_v.godwit_k USING utf8mb4) COLLATE utf8mb4_bin \
         AND CAST(`my table`.`Name` AS BINARY) <=> CAST(CONVERT(godwit_v.godwit_read_1 USING utf8mb4) AS BINARY) \
         AND CAST(`my table`.`amount` AS BINARY) <=> CAST(godwit_v.godwit_read_2 AS BINARY) \
         AND `my table`.`ratio` <=> CAST(godwit_v.godwit_read_3 AS DOUBLE) SET `Name` = godwit_v.godwit_1"
    );
    // Values read are bound as exact text.
    assert_eq!(
        params,
        [
            text("a"),
            text("x"),
            text("w"),
            Value::Decimal("1.50".into()),
            text("0.5")
        ]
    );
    assert_eq!(backend(Dialect::MySql).row_version(), None);
    let (sql, _) = checked_update(Dialect::Sqlite);
    assert_eq!(
        sql,
        "WITH godwit_v(godwit_k, godwit_1, godwit_read_1, godwit_read_2, godwit_read_3) AS (VALUES (?, ?, ?, ?, ?)) UPDATE \"my table\" SET \"Name\" = godwit_v.godwit_1 FROM godwit_v WHERE \"code\" = godwit_v.godwit_k \
         AND \"my table\".\"Name\" IS godwit_v.godwit_read_1 COLLATE BINARY \
         AND \"my table\".\"amount\" IS godwit_v.godwit_read_2 COLLATE BINARY \
         AND \"my table\".\"ratio\" IS godwit_v.godwit_read_3 COLLATE BINARY"
    );
    assert!(backend(Dialect::Sqlite).single_writer());
    assert!(
        !backend(Dialect::Postgres).single_writer() && !backend(Dialect::MySql).single_writer()
    );

    let keys = [text("a"), text("b")];
    let [key, ..] = columns(Dialect::Postgres);
    let (sql, params) = backend(Dialect::Postgres).key_in(&key, &keys, 1);
    assert_eq!(sql, "\"code\" = ANY($1::text[]::pg_catalog.varchar[])");
    assert_eq!(params, [array(&[Some("a"), Some("b")])]);
    let [key, ..] = columns(Dialect::MySql);
    let (sql, params) = backend(Dialect::MySql).key_in(&key, &keys, 1);
    assert_eq!(sql, "`code` IN (?, ?)");
    assert_eq!(params, keys);
}

/// The insert of two rows of `width` columns with `conflict`.
fn insert(dialect: Dialect, width: usize, conflict: Conflict<'_>) -> Option<(String, Vec<Value>)> {
    let all = columns(dialect);
    let columns: Vec<&ColumnInfo> = all.iter().take(width).collect();
    let rows = vec![
        columns
            .iter()
            .map(|c| text(&format!("{}1", c.name)))
            .collect(),
        vec![Value::Null; width],
    ];
    backend(dialect).insert_rows("into t", &columns, conflict, &rows)
}

fn array(values: &[Option<&str>]) -> Value {
    Value::TextArray(values.iter().map(|v| v.map(String::from)).collect())
}

const KEY: &[String] = &[];

#[test]
fn postgresql_unnests_one_text_array_per_column() {
    let (sql, params) = update(Dialect::Postgres);
    assert_eq!(
        sql,
        "UPDATE \"my table\" SET \"Name\" = godwit_v.godwit_1::pg_catalog.text, \"amount\" = godwit_v.godwit_2::pg_catalog.\"numeric\" FROM unnest($1::text[], $2::text[], $3::text[]) AS godwit_v(godwit_k, godwit_1, godwit_2) WHERE \"code\" = godwit_v.godwit_k::pg_catalog.varchar"
    );
    assert_eq!(
        params,
        [
            array(&[Some("a"), Some("b")]),
            array(&[Some("x"), None]),
            array(&[Some("1.50"), Some("2")])
        ]
    );
    let key = ["code".to_string()];
    let (sql, params) = insert(Dialect::Postgres, 3, Conflict::Update(&key)).unwrap();
    assert_eq!(
        sql,
        "INSERT INTO \"into t\" (\"code\", \"Name\", \"amount\") SELECT godwit_1::pg_catalog.varchar, godwit_2::pg_catalog.text, godwit_3::pg_catalog.\"numeric\" FROM unnest($1::text[], $2::text[], $3::text[]) AS godwit_v(godwit_1, godwit_2, godwit_3) ON CONFLICT (\"code\") DO UPDATE SET \"Name\" = excluded.\"Name\", \"amount\" = excluded.\"amount\""
    );
    assert_eq!(params[0], array(&[Some("code1"), None]));
    let (sql, _) = insert(Dialect::Postgres, 1, Conflict::Update(&key)).unwrap();
    assert_eq!(
        sql,
        "INSERT INTO \"into t\" (\"code\") SELECT godwit_1::pg_catalog.varchar FROM unnest($1::text[]) AS godwit_v(godwit_1) ON CONFLICT (\"code\") DO NOTHING"
    );
    // An upsert must name a unique key.
    assert_eq!(insert(Dialect::Postgres, 3, Conflict::Update(KEY)), None);
    assert_eq!(backend(Dialect::Postgres).lock_clause(), " FOR UPDATE");
}

#[test]
fn mysql_joins_a_union_and_updates_on_duplicate_keys() {
    let (sql, params) = update(Dialect::MySql);
    assert_eq!(
        sql,
        "UPDATE `my table` JOIN (SELECT ? AS godwit_k, ? AS godwit_1, ? AS godwit_2 UNION ALL SELECT ?, ?, ?) AS godwit_v ON `my table`.`code` = CONVERT(godwit_v.godwit_k USING utf8mb4) COLLATE utf8mb4_bin SET `Name` = godwit_v.godwit_1, `amount` = godwit_v.godwit_2"
    );
    assert_eq!(
        params,
        [
            text("a"),
            text("x"),
            Value::Decimal("1.50".into()),
            text("b"),
            Value::Null,
            Value::Decimal("2".into())
        ]
    );
    let key = ["code".to_string()];
    let (sql, params) = insert(Dialect::MySql, 3, Conflict::Update(&key)).unwrap();
    assert_eq!(
        sql,
        "INSERT INTO `into t` (`code`, `Name`, `amount`) VALUES (?, ?, ?), (?, ?, ?) ON DUPLICATE KEY UPDATE `Name` = VALUES(`Name`), `amount` = VALUES(`amount`)"
    );
    assert_eq!(params.len(), 6);
    let (sql, _) = insert(Dialect::MySql, 3, Conflict::Ignore).unwrap();
    assert_eq!(
        sql,
        "INSERT INTO `into t` (`code`, `Name`, `amount`) VALUES (?, ?, ?), (?, ?, ?) ON DUPLICATE KEY UPDATE `code` = `code`"
    );
    // MySQL upserts on whichever unique key the row collides with.
    let (sql, _) = insert(Dialect::MySql, 1, Conflict::Update(KEY)).unwrap();
    assert_eq!(
        sql,
        "INSERT INTO `into t` (`code`) VALUES (?), (?) ON DUPLICATE KEY UPDATE `code` = VALUES(`code`)"
    );
}

#[test]
fn sqlite_reads_rows_from_values_and_upserts_on_conflict() {
    let (sql, params) = update(Dialect::Sqlite);
    assert_eq!(
        sql,
        "WITH godwit_v(godwit_k, godwit_1, godwit_2) AS (VALUES (?, ?, ?), (?, ?, ?)) UPDATE \"my table\" SET \"Name\" = godwit_v.godwit_1, \"amount\" = godwit_v.godwit_2 FROM godwit_v WHERE \"code\" = godwit_v.godwit_k"
    );
    assert_eq!(params.len(), 6);
    let key = ["code".to_string()];
    let (sql, _) = insert(Dialect::Sqlite, 3, Conflict::Update(&key)).unwrap();
    assert_eq!(
        sql,
        "INSERT INTO \"into t\" (\"code\", \"Name\", \"amount\") VALUES (?, ?, ?), (?, ?, ?) ON CONFLICT (\"code\") DO UPDATE SET \"Name\" = excluded.\"Name\", \"amount\" = excluded.\"amount\""
    );
    let (sql, _) = insert(Dialect::Sqlite, 1, Conflict::Ignore).unwrap();
    assert_eq!(
        sql,
        "INSERT INTO \"into t\" (\"code\") VALUES (?), (?) ON CONFLICT DO NOTHING"
    );
    assert_eq!(insert(Dialect::Sqlite, 3, Conflict::Update(KEY)), None);
    assert_eq!(backend(Dialect::Sqlite).lock_clause(), "");
}

#[test]
fn session_settings_per_database() {
    let second = std::time::Duration::from_millis(1500);
    assert_eq!(
        backend(Dialect::Postgres).lease_session(second).as_deref(),
        Some("SET idle_in_transaction_session_timeout = 1500")
    );
    assert_eq!(
        backend(Dialect::MySql).lease_session(second).as_deref(),
        Some("SET SESSION wait_timeout = 2")
    );
    assert_eq!(backend(Dialect::Sqlite).lease_session(second), None);
    assert!(backend(Dialect::Postgres)
        .walk_session(second)
        .is_some_and(|s| s.starts_with("SET enable_seqscan = off;")
            && s.ends_with("SET statement_timeout = 1500")));
    assert_eq!(backend(Dialect::MySql).walk_session(second), None);
}
