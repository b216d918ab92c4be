//! Which keys each part of a plan knows, and what to say about a key it does not: a likely typo,
//! or a key that belongs in another part.

use toml::de::DeTable;

use super::context::Ctx;
use crate::suggest::closest;

const TOP_KEYS: &[&str] = &[
    "name",
    "database",
    "state",
    "defaults",
    "steps",
    "expect",
    "replicas",
    "max_replica_lag",
    "max_latency_increase",
    "probe_query",
    "notify",
    "notify_throttled_after",
];
const STATE_KEYS: &[&str] = &["database"];
const EXPECT_KEYS: &[&str] = &["max_duration"];
const SETTING_KEYS: &[&str] = &[
    "batch_size",
    "max_attempts",
    "lease",
    "batch_timeout",
    "on_row_error",
    "target_batch_time",
    "adaptive",
    "min_batch_size",
    "max_batch_size",
    "max_rows_per_second",
    "throttle_query",
    "row_timeout",
    "lua_memory",
    "max_batch_bytes",
    "locking",
];
const STEP_KEYS: &[&str] = &[
    "name",
    "after",
    "table",
    "key",
    "where",
    "sql",
    "lua",
    "lua_file",
    "command",
    "columns",
    "source",
    "query",
    "into",
    "target_key",
    "on_conflict",
    "convert",
    "ensure",
];
/// Every key of every section, for suggestions across sections (a key may come twice).
fn all_keys() -> impl Iterator<Item = &'static str> {
    [TOP_KEYS, EXPECT_KEYS, SETTING_KEYS, STEP_KEYS]
        .into_iter()
        .flatten()
        .copied()
}

/// The parts of a plan file whose keys are checked.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Top,
    State,
    Defaults,
    Expect,
    Step,
}

impl Section {
    fn known(self) -> Vec<&'static str> {
        match self {
            Section::Top => TOP_KEYS.to_vec(),
            Section::State => STATE_KEYS.to_vec(),
            Section::Defaults => SETTING_KEYS.to_vec(),
            Section::Expect => EXPECT_KEYS.to_vec(),
            Section::Step => [STEP_KEYS, SETTING_KEYS].concat(),
        }
    }

    /// Where `key` belongs when it is a known key of another section.
    fn elsewhere(self, key: &str) -> Option<String> {
        let in_steps = STEP_KEYS.contains(&key);
        let in_settings = SETTING_KEYS.contains(&key);
        // Top-level keys that make no sense in `[defaults]` or a step.
        let top_only = key != "name" && TOP_KEYS.contains(&key);
        let hint = match self {
            Section::Top if in_settings => "settings go in [defaults] or in a step".to_string(),
            Section::Top if in_steps => format!("`{key}` belongs in a [[steps]] table"),
            Section::Top if EXPECT_KEYS.contains(&key) => format!("`{key}` belongs in [expect]"),
            Section::Defaults if in_steps => {
                format!("`{key}` belongs in a [[steps]] table, not in [defaults]")
            }
            Section::Defaults if top_only => format!("`{key}` belongs at the top of the plan"),
            Section::Step if key == "database" => {
                "a step reads another database with `source`".to_string()
            }
            Section::Step if top_only => {
                format!("`{key}` belongs at the top of the plan, not in a step")
            }
            Section::State | Section::Expect if key == "name" || top_only => {
                format!("`{key}` belongs at the top of the plan")
            }
            _ => return None,
        };
        Some(hint)
    }
}

impl Ctx<'_> {
    /// Rejects keys of `table` that `section` does not know, with a hint where one helps.
    pub(super) fn unknown_keys(&mut self, table: &DeTable<'_>, section: Section, what: &str) {
        let known = section.known();
        for key in table.keys() {
            let name = key.get_ref().as_ref();
            if known.contains(&name) {
                continue;
            }
            let hint = section
                .elsewhere(name)
                .or_else(|| {
                    closest(name, known.iter().copied()).map(|k| format!("did you mean `{k}`?"))
                })
                .or_else(|| {
                    // A typo of a key that belongs elsewhere: say both.
                    let misplaced = closest(name, all_keys())?;
                    let there = section.elsewhere(misplaced)?;
                    Some(format!("did you mean `{misplaced}`? {there}"))
                })
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            self.push(&key.span(), format!("unknown key `{name}` in {what}{hint}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::check;
    use super::*;

    #[test]
    fn rejects_unknown_keys_everywhere_with_suggestions() {
        check(
            "name = \"x\"\ndatabse = \"sqlite://a\"\n\
             [state]\ndatabase = \"sqlite://s\"\nurl = \"x\"\n\
             [defaults]\nbatchsize = 3\n\
             [expect]\nmax_duraton = \"1h\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\ntabel = \"t\"\nBATCH-SIZE = 4\nfrobnicate = 1\n\
             [[steps]]\nsql = \"SELECT 2\"\nlau = \"x\"\n",
            "p.toml: the plan needs a `database` URL\n\
             p.toml:2:1: unknown key `databse` in the plan; did you mean `database`?\n\
             p.toml:5:1: unknown key `url` in [state]\n\
             p.toml:7:1: unknown key `batchsize` in [defaults]; did you mean `batch_size`?\n\
             p.toml:9:1: unknown key `max_duraton` in [expect]; did you mean `max_duration`?\n\
             p.toml:13:1: unknown key `tabel` in step \"a\"; did you mean `table`?\n\
             p.toml:14:1: unknown key `BATCH-SIZE` in step \"a\"; did you mean `batch_size`?\n\
             p.toml:15:1: unknown key `frobnicate` in step \"a\"\n\
             p.toml:16:1: this step has no `name`\n\
             p.toml:18:1: unknown key `lau` in a step; did you mean `lua`?",
        );
    }

    #[test]
    fn says_where_a_misplaced_key_belongs() {
        check(
            "name = \"x\"\ndatabase = \"sqlite://a\"\nbatch_size = 5\nsql = \"SELECT 1\"\nmax_duration = \"1h\"\n\
             [defaults]\ntable = \"t\"\nreplicas = []\ntabel = \"t\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\ndatabase = \"sqlite://b\"\nmax_replica_lag = \"1s\"\n",
            "p.toml:3:1: unknown key `batch_size` in the plan; settings go in [defaults] or in a step\n\
             p.toml:4:1: unknown key `sql` in the plan; `sql` belongs in a [[steps]] table\n\
             p.toml:5:1: unknown key `max_duration` in the plan; `max_duration` belongs in [expect]\n\
             p.toml:7:1: unknown key `table` in [defaults]; `table` belongs in a [[steps]] table, not in [defaults]\n\
             p.toml:8:1: unknown key `replicas` in [defaults]; `replicas` belongs at the top of the plan\n\
             p.toml:9:1: unknown key `tabel` in [defaults]; did you mean `table`? `table` belongs in a [[steps]] table, not in [defaults]\n\
             p.toml:13:1: unknown key `database` in step \"a\"; a step reads another database with `source`\n\
             p.toml:14:1: unknown key `max_replica_lag` in step \"a\"; `max_replica_lag` belongs at the top of the plan, not in a step",
        );
    }

    #[test]
    fn every_section_key_is_among_all_keys() {
        for section in [
            Section::Top,
            Section::State,
            Section::Defaults,
            Section::Expect,
            Section::Step,
        ] {
            for key in section.known() {
                assert!(all_keys().any(|k| k == key), "{key}");
            }
        }
    }

    #[test]
    fn suggests_only_close_keys() {
        assert_eq!(
            closest("batchsize", SETTING_KEYS.iter().copied()),
            Some("batch_size")
        );
        assert_eq!(
            closest("Lease", SETTING_KEYS.iter().copied()),
            Some("lease")
        );
        assert_eq!(closest("frobnicate", STEP_KEYS.iter().copied()), None);
    }
}
