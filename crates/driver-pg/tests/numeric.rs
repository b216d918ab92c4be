//! NUMERIC values read from a real PostgreSQL keep every digit: the decoded text equals the
//! server's own text form, for extremes, scales, signs, NaN and a few thousand random values.

use godwit_driver::{Conn, ConnectOptions, DbUrl, Value};

async fn connect() -> godwit_driver_pg::PgConn {
    let url = std::env::var("GODWIT_TEST_PG")
        .expect("GODWIT_TEST_PG is not set: run the tests with scripts/test.sh");
    godwit_driver_pg::connect(&DbUrl::new(url), &ConnectOptions::default())
        .await
        .expect("connect to PostgreSQL")
}

async fn assert_same(conn: &mut godwit_driver_pg::PgConn, from: &str) -> usize {
    let rows = conn
        .query(&format!("SELECT v, v::text FROM {from}"), &[])
        .await
        .expect("query numerics");
    for row in &rows {
        let expected = row.get(1).as_str().expect("text form").to_string();
        assert_eq!(row.get(0), &Value::Decimal(expected), "{from}");
    }
    rows.len()
}

#[tokio::test]
async fn numeric_values_keep_every_digit() {
    let mut conn = connect().await;
    let literals = [
        "0",
        "0.00",
        "-0.5",
        "1",
        "-1.000",
        "10000",
        "9999",
        "0.0001",
        "0.00000000000000000001",
        "1000.0001",
        "123456789012345678901234567890.123456789",
        "-99999999999999999999999999999999999999",
        "100000000",
        "3.14159265358979323846264338327950288419716939937510",
        "1e30",
        "-1.5e-25",
        "NaN",
        "Infinity",
        "-Infinity",
    ];
    let values: Vec<String> = literals
        .iter()
        .map(|l| format!("('{l}'::numeric)"))
        .collect();
    let n = assert_same(&mut conn, &format!("(VALUES {}) t(v)", values.join(", "))).await;
    assert_eq!(n, literals.len());
    // Random values of many magnitudes and scales.
    let n = assert_same(
        &mut conn,
        "(SELECT round((random() - 0.5)::numeric * power(10::numeric, (i % 60) - 20), (i % 30)) AS v \
         FROM generate_series(1, 3000) i) t",
    )
    .await;
    assert_eq!(n, 3000);
}
