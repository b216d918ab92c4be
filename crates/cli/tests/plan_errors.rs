//! Invalid plans and command lines, through the real binary, without any server: exit 2 with
//! `file:line:column: message` for every command, nothing created, and no password in any
//! output even when the database cannot be reached.

mod common;

use std::path::{Path, PathBuf};

use common::{godwit, path_str, text};

/// A temp dir holding plan files whose `database` is a SQLite file that must never appear.
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// The SQLite file the plans name; a refused plan must not create it.
    fn db_file(&self) -> PathBuf {
        self.dir.path().join("never.db")
    }

    fn database_line(&self) -> String {
        format!("database = \"sqlite://{}\"\n", self.db_file().display())
    }

    fn write(&self, file: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(file);
        std::fs::write(&path, text).expect("write plan");
        path
    }
}

/// Environment variables set for a command.
type Env<'a> = &'a [(&'a str, &'a str)];

/// stdout and stderr of a finished command, with its exit code.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

fn godwit_with(args: &[&str], env: Env) -> Ran {
    let mut cmd = godwit();
    cmd.args(args).env_remove("GODWIT_PLAN_ERRORS_UNSET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run godwit");
    Ran {
        code: out.status.code(),
        stdout: text(&out.stdout),
        stderr: text(&out.stderr),
    }
}

fn godwit_ran(args: &[&str]) -> Ran {
    godwit_with(args, &[])
}

/// Every command that reads a plan refuses `plan` with exit 2 and prints each of `expected`
/// (`file:line:column: message`, the file given relative to the plan's directory) in its
/// own form; `check --json` prints them as problems of an invalid plan.
fn assert_refused(dir: &Dir, plan: &Path, expected: &[&str]) {
    let expected: Vec<String> = expected
        .iter()
        .map(|e| format!("{}/{e}", dir.dir.path().display()))
        .collect();
    for command in ["run", "status", "check"] {
        let ran = godwit_ran(&[command, path_str(plan)]);
        assert_eq!(ran.code, Some(2), "{command}: {}", ran.all());
        for e in &expected {
            let line = if command == "check" {
                format!("problem: {e}")
            } else {
                format!("error: {e}")
            };
            assert!(
                ran.all().lines().any(|l| l == line),
                "{command}: expected the line {line:?} in:\n{}",
                ran.all()
            );
        }
    }
    let ran = godwit_ran(&["check", path_str(plan), "--json"]);
    assert_eq!(ran.code, Some(2), "check --json: {}", ran.all());
    let report: serde_json::Value = serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("check --json printed no JSON ({e}): {}", ran.all()));
    assert_eq!(report["valid"], false, "{report}");
    let messages: Vec<&str> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter_map(|p| p["message"].as_str())
        .collect();
    for e in &expected {
        assert!(messages.contains(&e.as_str()), "{e:?} not in {report}");
    }
    assert!(
        !dir.db_file().exists(),
        "a refused plan created its database file"
    );
}

#[test]
fn toml_syntax_error_names_line_and_column() {
    let dir = Dir::new();
    // An unclosed string on line 6; the error points at its end, column 16.
    let plan = dir.write(
        "syntax.toml",
        &format!(
            "name = \"x\"\n{}\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\n",
            dir.database_line()
        ),
    );
    assert_refused(
        &dir,
        &plan,
        &["syntax.toml:6:16: invalid TOML: invalid basic string, expected `\"`"],
    );
}

#[test]
fn unknown_key_suggests_the_right_one() {
    let dir = Dir::new();
    let plan = dir.write(
        "typo.toml",
        &format!(
            "name = \"x\"\n{}\n[[steps]]\nname = \"a\"\ntabel = \"t\"\nsql = \"SELECT 1\"\n",
            dir.database_line()
        ),
    );
    assert_refused(
        &dir,
        &plan,
        &["typo.toml:6:1: unknown key `tabel` in step \"a\"; did you mean `table`?"],
    );
}

/// Issue 12: a plan key a version would read and then ignore is refused by every command that
/// reads a plan. Issues 13 and 15 made the last ones act: `[expect] max_duration` (the
/// threshold of `godwit estimate`) is accepted by `check` and `submit` alike, and nothing says
/// "not supported yet".
#[test]
fn the_last_keys_not_supported_yet_are_accepted() {
    let dir = Dir::new();
    let plan = dir.write(
        "later.toml",
        &format!(
            "name = \"x\"\n{}[expect]\nmax_duration = \"2h\"\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n",
            dir.database_line()
        ),
    );
    // The plan's database is never created here: what the commands say is about it alone.
    for command in ["check", "submit"] {
        let ran = godwit_ran(&[command, path_str(&plan)]);
        assert!(ran.all().contains("never.db"), "{command}: {}", ran.all());
        assert!(
            !ran.all().contains("not supported yet") && !ran.all().contains("max_duration"),
            "{command}: {}",
            ran.all()
        );
    }
}

/// `locking` chooses how a transform step keeps the application's writes; on a `sql` step or a
/// copy it would do nothing, and a value it does not know means nothing: each is refused where
/// it is written, by every command.
#[test]
fn locking_where_it_would_do_nothing_is_refused() {
    let dir = Dir::new();
    let plan = dir.write(
        "locking.toml",
        &format!(
            "name = \"x\"\n{}\n[defaults]\nlocking = \"pessimistic\"\n\n\
             [[steps]]\nname = \"once\"\nsql = \"SELECT 1\"\nlocking = \"rows\"\n\n\
             [[steps]]\nname = \"copy\"\ntable = \"t\"\nkey = \"id\"\ninto = \"u\"\n  locking = \"optimistic\"\n",
            dir.database_line()
        ),
    );
    assert_refused(
        &dir,
        &plan,
        &[
            "locking.toml:5:11: `locking` must be \"optimistic\" or \"rows\", not \"pessimistic\"",
            "locking.toml:10:1: step \"once\": `locking` applies to transform steps (`lua`, `lua_file` or `command`), not to `sql` steps: the database locks what a statement changes while it runs",
            "locking.toml:17:3: step \"copy\": `locking` applies to transform steps, not to copies (steps with `into`): a copy reads its source without locks and only inserts into its target",
        ],
    );
}

#[test]
fn unset_variable_is_named() {
    let dir = Dir::new();
    let plan = dir.write(
        "unset.toml",
        "name = \"x\"\ndatabase = \"sqlite://${GODWIT_PLAN_ERRORS_UNSET}/x.db\"\n\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n",
    );
    assert_refused(
        &dir,
        &plan,
        &["unset.toml:2:1: `database` uses ${GODWIT_PLAN_ERRORS_UNSET}, but the environment variable GODWIT_PLAN_ERRORS_UNSET is not set"],
    );
}

#[test]
fn unknown_after_step_suggests_a_step() {
    let dir = Dir::new();
    let plan = dir.write(
        "after.toml",
        &format!(
            "name = \"x\"\n{}\n[[steps]]\nname = \"load\"\nsql = \"SELECT 1\"\n\n\
             [[steps]]\nname = \"index\"\nafter = [\"lod\"]\nsql = \"SELECT 2\"\n",
            dir.database_line()
        ),
    );
    assert_refused(
        &dir,
        &plan,
        &["after.toml:10:10: step \"index\" comes after \"lod\", which is not a step of this plan; did you mean \"load\"?"],
    );
}

#[test]
fn cycle_through_after_is_spelled_out() {
    let dir = Dir::new();
    let plan = dir.write(
        "cycle.toml",
        &format!(
            "name = \"x\"\n{}\n\
             [[steps]]\nname = \"a\"\nafter = [\"c\"]\nsql = \"SELECT 1\"\n\n\
             [[steps]]\nname = \"b\"\nafter = [\"a\"]\nsql = \"SELECT 2\"\n\n\
             [[steps]]\nname = \"c\"\nafter = [\"b\"]\nsql = \"SELECT 3\"\n",
            dir.database_line()
        ),
    );
    assert_refused(
        &dir,
        &plan,
        &["cycle.toml:6:1: steps form a cycle through `after`: a -> c -> b -> a"],
    );
}

#[test]
fn duplicate_step_names_point_at_the_second() {
    let dir = Dir::new();
    let plan = dir.write(
        "dupes.toml",
        &format!(
            "name = \"x\"\n{}\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n\n\
             [[steps]]\nname = \"a\"\nsql = \"SELECT 2\"\n",
            dir.database_line()
        ),
    );
    assert_refused(
        &dir,
        &plan,
        &["dupes.toml:9:8: a step named \"a\" already exists at line 5; step names must be unique"],
    );
}

/// One plan with several mistakes gets all of them at once, in file order.
#[test]
fn several_errors_are_listed_together() {
    let dir = Dir::new();
    let plan = dir.write(
        "many.toml",
        &format!(
            "name = \"x\"\n{}\n[defaults]\nbatchsize = 3\n\n\
             [[steps]]\nname = \"load\"\nsql = \"SELECT 1\"\n\n\
             [[steps]]\nname = \"index\"\nafter = [\"lod\"]\ntabel = \"t\"\nsql = \"SELECT 1\"\n\n\
             [[steps]]\nname = \"load\"\nsql = \"SELECT 2\"\n",
            dir.database_line()
        ),
    );
    assert_refused(
        &dir,
        &plan,
        &[
            "many.toml:5:1: unknown key `batchsize` in [defaults]; did you mean `batch_size`?",
            "many.toml:13:10: step \"index\" comes after \"lod\", which is not a step of this plan; did you mean \"load\"?",
            "many.toml:14:1: unknown key `tabel` in step \"index\"; did you mean `table`?",
            "many.toml:18:8: a step named \"load\" already exists at line 8; step names must be unique",
        ],
    );
    let ran = godwit_ran(&["run", path_str(&plan)]);
    let errors = ran
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .count();
    assert_eq!(errors, 4, "{}", ran.stderr);
}

/// A plan file that cannot be read is an invalid plan too.
#[test]
fn missing_plan_file_exits_2() {
    let dir = Dir::new();
    let missing = dir.dir.path().join("nowhere.toml");
    for args in [
        vec!["run", path_str(&missing)],
        vec!["status", path_str(&missing)],
        vec!["check", path_str(&missing)],
        vec!["check", path_str(&missing), "--json"],
    ] {
        let ran = godwit_ran(&args);
        assert_eq!(ran.code, Some(2), "{args:?}: {}", ran.all());
        assert!(
            ran.all().contains("nowhere.toml: cannot read the plan"),
            "{args:?}: {}",
            ran.all()
        );
    }
}

const SECRET: &str = "s3cretpw";

/// Runs `run`, `status` and `check` (plain and JSON, logging everything) on `plan` and fails
/// if the secret appears anywhere; returns what each printed.
fn assert_no_secret(plan: &Path, env: Env) -> Vec<(String, Ran)> {
    let mut all = Vec::new();
    for args in [
        vec!["run", path_str(plan)],
        vec!["run", path_str(plan), "--json"],
        vec!["status", path_str(plan)],
        vec!["status", path_str(plan), "--json"],
        vec!["check", path_str(plan)],
        vec!["check", path_str(plan), "--json"],
    ] {
        let mut env = env.to_vec();
        env.push(("RUST_LOG", "trace"));
        let ran = godwit_with(&args, &env);
        assert!(
            !ran.all().contains(SECRET),
            "{args:?} printed the password:\n{}",
            ran.all()
        );
        all.push((args.join(" "), ran));
    }
    all
}

/// The password of an unreachable database never appears, while every command still says it
/// cannot connect to that (redacted) address.
#[test]
fn password_never_appears_when_the_database_is_unreachable() {
    let dir = Dir::new();
    let url = "postgres://u:s3cretpw@127.0.0.1:1/x";
    let plan = dir.write(
        "secret.toml",
        &format!(
            "name = \"x\"\ndatabase = \"{url}\"\n\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n"
        ),
    );
    for (command, ran) in assert_no_secret(&plan, &[]) {
        assert_ne!(ran.code, Some(0), "{command}: {}", ran.all());
        assert!(
            ran.all()
                .contains("cannot connect to postgres://u:***@127.0.0.1:1/x: Connection refused"),
            "{command} must say the database is unreachable:\n{}",
            ran.all()
        );
        if command.starts_with("check") {
            assert_eq!(ran.code, Some(2), "{command}: {}", ran.all());
        }
    }
    let ran = godwit_ran(&["check", path_str(&plan), "--json"]);
    let report: serde_json::Value = serde_json::from_str(&ran.stdout).expect("JSON");
    assert_eq!(report["problems"][0]["code"], "unreachable-database");
}

/// The same through `${VAR}`, a `password=` query parameter, MySQL, and a `[state]` database.
#[test]
fn password_never_appears_in_any_spelling() {
    let dir = Dir::new();
    let cases: [(&str, &str, Env); 4] = [
        (
            "env.toml",
            "database = \"${GODWIT_TEST_SECRET_URL}\"\n",
            &[(
                "GODWIT_TEST_SECRET_URL",
                "postgres://u:s3cretpw@127.0.0.1:1/x",
            )],
        ),
        (
            "query.toml",
            "database = \"postgres://127.0.0.1:1/x?user=u&password=s3cretpw\"\n",
            &[],
        ),
        (
            "mysql.toml",
            "database = \"mysql://u:s3cretpw@127.0.0.1:1/x\"\n",
            &[],
        ),
        (
            "state.toml",
            "database = \"postgres://u:s3cretpw@127.0.0.1:1/x\"\n\n[state]\ndatabase = \"mysql://v:s3cretpw@127.0.0.1:1/y\"\n",
            &[],
        ),
    ];
    for (file, database, env) in cases {
        let plan = dir.write(
            file,
            &format!("name = \"x\"\n{database}\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n"),
        );
        for (command, ran) in assert_no_secret(&plan, env) {
            assert_ne!(ran.code, Some(0), "{file} {command}: {}", ran.all());
            assert!(
                ran.all().contains("127.0.0.1:1") && ran.all().contains("cannot connect"),
                "{file} {command} must say the database is unreachable:\n{}",
                ran.all()
            );
        }
    }
}

/// A mistyped URL (no `:` after the scheme, or no scheme at all) is refused, and its
/// password does not appear in the message either.
#[test]
fn password_never_appears_in_a_mistyped_url() {
    let dir = Dir::new();
    for (file, url) in [
        ("colon.toml", "postgres//u:s3cretpw@127.0.0.1:1/x"),
        ("scheme.toml", "u:s3cretpw@127.0.0.1:1/x"),
    ] {
        let plan = dir.write(
            file,
            &format!(
                "name = \"x\"\ndatabase = \"{url}\"\n\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n"
            ),
        );
        for (command, ran) in assert_no_secret(&plan, &[]) {
            assert_ne!(ran.code, Some(0), "{file} {command}: {}", ran.all());
            assert!(
                ran.all().contains("unsupported database URL"),
                "{file} {command}: {}",
                ran.all()
            );
        }
    }
}

/// Bad command lines exit 2 without touching the plan's database; help and version exit 0.
#[test]
fn bad_command_lines_exit_2() {
    let dir = Dir::new();
    let plan = dir.write(
        "ok.toml",
        &format!(
            "name = \"x\"\n{}\n[[steps]]\nname = \"a\"\nsql = \"SELECT 1\"\n",
            dir.database_line()
        ),
    );
    let p = path_str(&plan);
    let bad: Vec<(Vec<&str>, &str)> = vec![
        (vec![], "Usage"),
        (vec!["frobnicate"], "frobnicate"),
        (vec!["run"], "<PLAN>"),
        (vec!["run", p, "--no-such-flag"], "--no-such-flag"),
        (vec!["status", p, "--no-such-flag"], "--no-such-flag"),
        (vec!["check", p, "--no-such-flag"], "--no-such-flag"),
        (vec!["run", p, "--concurrency", "0"], "--concurrency"),
        (vec!["run", p, "--concurrency", "many"], "--concurrency"),
        (vec!["run", p, "--max-duration", "soon"], "--max-duration"),
        (vec!["run", p, "--json", "--quiet"], "--quiet"),
        (vec!["run", p, p], "unexpected argument"),
    ];
    for (args, says) in bad {
        let ran = godwit_ran(&args);
        assert_eq!(ran.code, Some(2), "{args:?}: {}", ran.all());
        assert!(ran.stderr.contains(says), "{args:?}: {}", ran.stderr);
        assert!(
            !dir.db_file().exists(),
            "{args:?} created the plan's database"
        );
    }
    for args in [vec!["--help"], vec!["run", "--help"], vec!["--version"]] {
        let ran = godwit_ran(&args);
        assert_eq!(ran.code, Some(0), "{args:?}: {}", ran.all());
        assert!(!ran.stdout.is_empty(), "{args:?} printed nothing");
    }
}
