//! The keys of the plan format that this version reads but does not act on yet, and their
//! refusal (issue 12): the production-safety and foresight work takes each key off the list
//! as it makes the key work.

use toml::de::DeTable;

use super::context::{Ctx, NotYet};
use super::keys_in_file_order;

/// Keys of the plan format that this version reads and checks but does not act on yet. A key
/// that is accepted and then ignored is worse than an error: a user who writes
/// `max_rows_per_second = 500` believes the database is protected. Each leaves this list in the
/// version that makes it work.
pub(super) const NOT_SUPPORTED_YET: &[&str] = &[];

impl Ctx<'_> {
    /// Refuses the keys of `table` that this version would read and then ignore.
    pub(super) fn not_supported_yet(&mut self, table: &DeTable<'_>, what: &str) {
        if self.not_yet != NotYet::Refuse {
            return;
        }
        for (key, span) in keys_in_file_order(table, NOT_SUPPORTED_YET) {
            self.push(
                &span,
                format!(
                    "`{key}` in {what} is not supported yet: this version would accept it and do nothing, so the plan is refused; remove the key to run without it"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::test_support::{env, HEAD};
    use super::NOT_SUPPORTED_YET;

    /// Issue 12: a key that would be read and then ignored is refused. Issues 13 and 15 made
    /// the last ones act (`replicas`, `max_replica_lag`, `max_latency_increase`,
    /// `probe_query`, `[expect] max_duration`): the list is empty, and a plan with them all
    /// parses.
    #[test]
    fn every_key_of_the_contract_acts() {
        assert!(NOT_SUPPORTED_YET.is_empty(), "{NOT_SUPPORTED_YET:?}");
        let text = format!(
            "{HEAD}replicas = [\"postgres://r/d\"]\nmax_replica_lag = \"10s\"\n\
             max_latency_increase = \"2x\"\nprobe_query = \"SELECT 1\"\n\
             [expect]\nmax_duration = \"2h\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n"
        );
        let plan = crate::parse::parse(&text, Path::new("p.toml"), &env).expect("parses");
        assert_eq!(
            plan.expect_max_duration,
            Some(std::time::Duration::from_secs(7200))
        );
    }
}
