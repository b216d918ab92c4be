//! A step's post-conditions (`ensure`): what each query returns, and whether that holds. `run`
//! asks them once every batch of the step is done, before marking it done; `check` asks them
//! beforehand to show how much work is left.

use godwit_driver::{Conn, Row, TxOptions, Value};
use godwit_plan::Ensure;

/// What an `ensure` query returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Whether its first column of its first row is true.
    pub holds: bool,
    /// The first row as `column = value, …` (or `no row`), for messages.
    pub shown: String,
    /// Why the answer is neither true nor false, when it is not (NULL, no row, a count).
    pub not_boolean: Option<String>,
}

/// Runs `ensure` on `conn` in a transaction that is rolled back, so that asking changes
/// nothing even if the query has side effects.
///
/// # Errors
/// The database's error when the query fails.
pub async fn ask(conn: &mut dyn Conn, ensure: &Ensure) -> Result<Answer, godwit_driver::Error> {
    conn.begin(TxOptions::default()).await?;
    let rows = conn.query(&ensure.sql, &[]).await;
    // The rollback's own error matters less than the query's.
    let rolled_back = conn.rollback().await;
    let rows = rows?;
    rolled_back?;
    Ok(answer(rows.first()))
}

/// Judges the first row of an answer: true is a boolean true, or 1 where booleans are numbers
/// (MariaDB, MySQL, SQLite). Any other number is refused rather than read as true, since
/// `SELECT count(*) FROM …` (a count, not a condition) is an easy slip.
fn answer(row: Option<&Row>) -> Answer {
    let Some(row) = row else {
        return Answer {
            holds: false,
            shown: "no row".to_string(),
            not_boolean: Some("it returned no row".to_string()),
        };
    };
    let shown = row
        .columns()
        .iter()
        .zip(row.values())
        .map(|(name, value)| format!("{name} = {}", show(value)))
        .collect::<Vec<_>>()
        .join(", ");
    let (holds, not_boolean) = match row.values().first() {
        Some(Value::Bool(b)) => (*b, None),
        Some(Value::Int(1)) => (true, None),
        Some(Value::Int(0)) => (false, None),
        Some(Value::Null) => (false, Some("its first column is NULL".to_string())),
        Some(other) => (
            false,
            Some(format!(
                "its first column is {}, not true or false: write a condition, such as \
                 `SELECT count(*) = 0 FROM …`",
                show(other)
            )),
        ),
        None => (false, Some("it returned no column".to_string())),
    };
    Answer {
        holds,
        shown,
        not_boolean,
    }
}

/// A value as a message shows it.
fn show(value: &Value) -> String {
    match value {
        Value::Null => "NULL".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Text(s) => format!("{s:?}"),
        Value::Json(j) => j.to_string(),
        other => other.text_form().unwrap_or_else(|| format!("{other:?}")),
    }
}

impl Answer {
    /// The failure message of a step whose `ensure` number `index` (from 1) did not hold.
    pub fn failure(&self, step: &str, index: usize, ensure: &Ensure) -> String {
        let why = match &self.not_boolean {
            Some(why) => format!("; {why}"),
            None => String::new(),
        };
        format!(
            "step {step:?}: ensure {index} (line {}) did not hold once every batch was done: \
             it returned {}{why}: {}",
            ensure.location.line,
            self.shown,
            ensure.sql.trim()
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn row(values: Vec<Value>) -> Row {
        let columns: Arc<[String]> = (0..values.len()).map(|i| format!("c{i}")).collect();
        Row::new(columns, values)
    }

    #[test]
    fn true_is_a_boolean_or_one() {
        assert!(answer(Some(&row(vec![Value::Bool(true)]))).holds);
        assert!(answer(Some(&row(vec![Value::Int(1), Value::Int(7)]))).holds);
        let no = answer(Some(&row(vec![Value::Int(0), Value::Int(7)])));
        assert!(!no.holds);
        assert_eq!(no.shown, "c0 = 0, c1 = 7");
        assert_eq!(no.not_boolean, None);
    }

    #[test]
    fn a_count_null_or_nothing_is_not_read_as_an_answer() {
        let count = answer(Some(&row(vec![Value::Int(5)])));
        assert!(!count.holds);
        assert!(count.not_boolean.unwrap().contains("not true or false"));
        let null = answer(Some(&row(vec![Value::Null])));
        assert!(!null.holds);
        assert_eq!(null.shown, "c0 = NULL");
        let none = answer(None);
        assert!(!none.holds);
        assert_eq!(none.not_boolean.as_deref(), Some("it returned no row"));
    }
}
