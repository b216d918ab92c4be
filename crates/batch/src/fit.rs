//! Fitting values to the columns they are written into: lengths, decimals, types.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use godwit_driver::{quote_ident, ColumnInfo, Dialect, SqlType, TableInfo, Value};
use godwit_plan::Convert;

/// The columns of a table that rows are written into, by name.
pub(crate) struct Columns {
    /// By lower-case name.
    by_name: HashMap<String, Column>,
    /// Stored name to lower-case name: most lookups use the name as stored, without
    /// allocating a lower-case copy.
    exact: HashMap<String, String>,
}

/// One column of a table written to.
pub(crate) struct Column {
    /// The name as stored.
    pub(crate) name: String,
    pub(crate) sql_type: SqlType,
    /// What the database reported of the column (its type's name with its length or
    /// precision, the cast a statement writes its values with).
    pub(crate) info: ColumnInfo,
    /// The decimals the column holds exactly; a decimal beyond them would be rounded (by
    /// PostgreSQL and MySQL without an error) and is refused instead.
    decimals: Option<Decimals>,
    /// The most characters a `varchar(n)`/`char(n)` column holds: a longer text is a bad row
    /// (which `on_row_error = "skip"` can set aside) rather than a failed statement.
    max_chars: Option<usize>,
    /// The table's database, for the values its columns cannot hold whatever their type.
    dialect: Dialect,
}

/// The length limit of a `varchar(n)`, `character varying(n)` or `char(n)` column.
fn max_chars(dialect: Dialect, sql_type: SqlType, data_type: &str) -> Option<usize> {
    if sql_type != SqlType::Text || dialect == Dialect::Sqlite {
        return None;
    }
    let t = data_type.to_ascii_lowercase();
    let limited = [
        "varchar(",
        "character varying(",
        "char(",
        "character(",
        "nvarchar(",
        "nchar(",
    ]
    .iter()
    .any(|p| t.starts_with(p));
    if !limited {
        return None;
    }
    t.split_once('(')?.1.split_once(')')?.0.trim().parse().ok()
}

impl Column {
    /// `value` fitted to this column, or what is wrong with it; `convert` says what to write
    /// instead of a value the column cannot hold.
    pub(crate) fn fit(
        &self,
        value: Value,
        convert: &BTreeMap<String, Convert>,
    ) -> Result<Value, String> {
        let rule = convert
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(&self.name))
            .map(|(_, rule)| *rule);
        let value = match (rule, value, self.sql_type) {
            (Some(Convert::Replace), Value::Bytes(b), SqlType::Text) => {
                Value::Text(String::from_utf8_lossy(&b).into_owned())
            }
            (_, value, _) => value,
        };
        match (self.sql_type.fit(value).and_then(|v| self.holds(v)), rule) {
            (Ok(v), _) => Ok(v),
            (Err(_), Some(Convert::Null)) => Ok(Value::Null),
            (Err(problem), _) => Err(format!("column {}: {problem}", self.name)),
        }
    }

    /// `v` (already of the column's type) when the column holds it as it is: a decimal
    /// within its precision and scale, a text within its length.
    fn holds(&self, v: Value) -> Result<Value, String> {
        match &v {
            Value::Decimal(d) => match self.decimals.and_then(|l| l.refuse(d)) {
                Some(problem) => Err(problem),
                None => Ok(v),
            },
            Value::Text(t) => match self.max_chars {
                Some(max) if t.chars().count() > max => Err(format!(
                    "{} characters are more than the column's {max}",
                    t.chars().count()
                )),
                _ => Ok(v),
            },
            // SQLite stores a NaN as NULL, without a word.
            Value::Float(f) if f.is_nan() && self.dialect == Dialect::Sqlite => {
                Err("NaN cannot be stored: SQLite would store NULL".to_string())
            }
            Value::Date(_) | Value::Timestamp(_) | Value::TimestampTz(_)
                if self.dialect == Dialect::MySql =>
            {
                // MySQL's dates hold the years 1 to 9999 (a PostgreSQL date can be BC). The
                // text form writes a year beyond them with a sign or a fifth digit.
                let text = v.text_form().unwrap_or_default();
                let year = text
                    .get(..4)
                    .filter(|_| text.as_bytes().get(4) == Some(&b'-'));
                match year.and_then(|y| y.parse::<u16>().ok()) {
                    Some(1..=9999) => Ok(v),
                    _ => Err(format!(
                        "{text} is outside the years 1 to 9999 that MySQL holds"
                    )),
                }
            }
            _ => Ok(v),
        }
    }
}

/// What a decimal column holds without rounding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Decimals {
    /// `numeric(precision, scale)`.
    Fixed { precision: usize, scale: usize },
    /// SQLite's NUMERIC affinity: integers of 64 bits, else a float's 15 significant digits.
    Sqlite,
}

impl Decimals {
    fn of(dialect: Dialect, sql_type: SqlType, data_type: &str) -> Option<Decimals> {
        if sql_type != SqlType::Decimal {
            return None;
        }
        if dialect == Dialect::Sqlite {
            return Some(Decimals::Sqlite);
        }
        let inner = data_type.split_once('(')?.1.split_once(')')?.0;
        let mut parts = inner.split(',').map(|p| p.trim().parse::<usize>());
        let precision = parts.next()?.ok()?;
        let scale = match parts.next() {
            Some(s) => s.ok()?,
            None => 0,
        };
        Some(Decimals::Fixed { precision, scale })
    }

    /// Why `text` does not fit, if it does not.
    fn refuse(self, text: &str) -> Option<String> {
        let (int_digits, frac_digits) = decimal_digits(text)?;
        let fits = match self {
            Decimals::Fixed { precision, scale } => {
                frac_digits <= scale && int_digits <= precision.saturating_sub(scale)
            }
            Decimals::Sqlite => {
                (frac_digits == 0 && text.trim().parse::<i64>().is_ok())
                    || int_digits + frac_digits <= 15
            }
        };
        if fits {
            return None;
        }
        Some(match self {
            Decimals::Fixed { precision, scale } => format!(
                "{text} does not fit numeric({precision},{scale}) without rounding; round it in a transform or widen the column"
            ),
            Decimals::Sqlite => format!(
                "{text} has more digits than SQLite keeps in a NUMERIC column (a float's 15); declare the column TEXT to keep them"
            ),
        })
    }
}

/// The digits of a decimal's integer part (without leading zeros) and of its fraction
/// (without trailing zeros); `None` for what is not a plain decimal (`NaN`, `Infinity`).
fn decimal_digits(text: &str) -> Option<(usize, usize)> {
    let t = text.trim();
    let t = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i64>().ok()?),
        None => (t, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if !(int.bytes().all(|b| b.is_ascii_digit()) && frac.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let digits: String = format!("{int}{frac}");
    // Where the point falls among `digits`, after the exponent moved it.
    let point = int.len() as i64 + exponent;
    let first = digits.find(|c| c != '0')? as i64;
    let last = digits.rfind(|c| c != '0')? as i64 + 1;
    let int_digits = (point - first).max(0) as usize;
    let frac_digits = (last - point).max(0) as usize;
    Some((int_digits, frac_digits))
}

impl Columns {
    pub(crate) fn new(info: &TableInfo, dialect: Dialect) -> Columns {
        let by_name: HashMap<String, Column> = info
            .columns
            .iter()
            .map(|c| {
                let sql_type = c.sql_type();
                let column = Column {
                    name: c.name.clone(),
                    sql_type,
                    info: c.clone(),
                    decimals: Decimals::of(dialect, sql_type, &c.data_type),
                    max_chars: max_chars(dialect, sql_type, &c.data_type),
                    dialect,
                };
                (c.name.to_lowercase(), column)
            })
            .collect();
        let exact = by_name
            .iter()
            .map(|(lower, c)| (c.name.clone(), lower.clone()))
            .collect();
        Columns { by_name, exact }
    }

    /// The names of the columns that hold bytes.
    pub(crate) fn bytes_columns(&self) -> Arc<[String]> {
        self.by_name
            .values()
            .filter(|c| c.sql_type == SqlType::Bytes)
            .map(|c| c.name.clone())
            .collect()
    }

    /// The column named `name`, compared without case as unquoted names are.
    pub(crate) fn get(&self, name: &str) -> Option<&Column> {
        match self.exact.get(name) {
            Some(lower) => self.by_name.get(lower),
            None => self.by_name.get(&name.to_lowercase()),
        }
    }

    /// What the database reported of the columns `names`, for the statements that write them;
    /// `Err` names a column the table lacks.
    pub(crate) fn infos(&self, names: &[String]) -> Result<Vec<&ColumnInfo>, String> {
        names
            .iter()
            .map(|n| {
                self.get(n)
                    .map(|c| &c.info)
                    .ok_or_else(|| format!("the table has no column {n}"))
            })
            .collect()
    }

    /// A transform's row fitted to the table: each column by its stored name with its value
    /// fitted to the column's type, or what is wrong with the row. `convert` says, per
    /// column, what to write instead of a value the column cannot hold without loss.
    pub(crate) fn fit(
        &self,
        row: Vec<(String, Value)>,
        convert: &BTreeMap<String, Convert>,
    ) -> Result<Vec<(String, Value)>, String> {
        row.into_iter()
            .map(|(name, value)| {
                let column = self
                    .get(&name)
                    .ok_or_else(|| format!("the table has no column {name}"))?;
                Ok((column.name.clone(), column.fit(value, convert)?))
            })
            .collect()
    }
}

/// `name` as a read selects it: types godwit does not decode (enums, arrays, ranges, network
/// types) as their text.
pub(crate) fn selected(dialect: Dialect, info: &TableInfo, name: &str) -> String {
    let q = quote_ident(dialect, name);
    if info.column(name).is_some_and(|c| !c.decodable()) {
        format!("{q}::text AS {q}")
    } else {
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_that_would_be_rounded_are_refused() {
        let fixed = Decimals::Fixed {
            precision: 5,
            scale: 2,
        };
        assert_eq!(fixed.refuse("123.45"), None);
        assert_eq!(fixed.refuse("-123.450000"), None);
        assert_eq!(fixed.refuse("0.5"), None);
        assert!(fixed.refuse("123.456").is_some());
        assert!(fixed.refuse("1234.5").is_some());
        assert_eq!(fixed.refuse("1.2345e2"), None);
        assert!(fixed.refuse("1.2345e3").is_some());
        assert_eq!(fixed.refuse("NaN"), None);
        assert_eq!(Decimals::Sqlite.refuse("9223372036854775807"), None);
        assert_eq!(Decimals::Sqlite.refuse("1234567.12345678"), None);
        assert!(Decimals::Sqlite
            .refuse("12345678901234567890.0123456789")
            .is_some());
        assert_eq!(decimal_digits("000.000"), None);
        assert_eq!(decimal_digits("0.001"), Some((0, 3)));
        assert_eq!(
            Decimals::of(Dialect::Postgres, SqlType::Decimal, "numeric(12,2)"),
            Some(Decimals::Fixed {
                precision: 12,
                scale: 2
            })
        );
        assert_eq!(
            Decimals::of(Dialect::MySql, SqlType::Decimal, "decimal(10,0) unsigned"),
            Some(Decimals::Fixed {
                precision: 10,
                scale: 0
            })
        );
        assert_eq!(
            Decimals::of(Dialect::Postgres, SqlType::Decimal, "numeric"),
            None
        );
        assert_eq!(
            max_chars(Dialect::Postgres, SqlType::Text, "character varying(20)"),
            Some(20)
        );
        assert_eq!(
            max_chars(Dialect::MySql, SqlType::Text, "varchar(190)"),
            Some(190)
        );
        assert_eq!(max_chars(Dialect::Postgres, SqlType::Text, "text"), None);
        assert_eq!(
            max_chars(Dialect::Sqlite, SqlType::Text, "varchar(5)"),
            None
        );
    }
}
