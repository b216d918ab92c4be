//! Every TOML example in the README and in `docs/` is a plan godwit reads (issue 12, point 8),
//! and those over the demo's `customers` table pass `godwit check` against the real SQLite demo
//! database.
//!
//! A ```` ```toml ```` block says what it is in its fence's info string (see CONTRIBUTING.md):
//!
//! * `toml`: a whole plan. Parsed, then checked with every `${VAR}` it uses set to the demo
//!   database's URL.
//! * `toml steps`: `[[steps]]` tables over the demo's table. The test writes a plan's `name` and
//!   `database` (the demo's) in front, then parses and checks it.
//! * `toml fragment`: keys or steps over tables or databases the test does not have. The same
//!   head goes in front; the result is parsed, not checked.

mod common;

use std::path::{Path, PathBuf};

use common::{path_str, text};

/// What a fenced block's info string says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Plan,
    Steps,
    Fragment,
}

/// One ```` ```toml ```` block of a Markdown file.
struct Block {
    /// `FILE:LINE` of its opening fence, for messages.
    at: String,
    kind: Kind,
    text: String,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The README and every page of `docs/`, in a fixed order.
fn documents() -> Vec<PathBuf> {
    let mut pages: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .expect("the docs folder")
        .map(|entry| entry.expect("a docs entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    pages.sort();
    pages.insert(0, repo().join("README.md"));
    pages
}

/// The TOML blocks of the Markdown file `path`. Any info string starting with `toml` must be one
/// of the three kinds, so that a misspelt one fails rather than goes unchecked.
fn toml_blocks(path: &Path) -> Vec<Block> {
    let markdown = std::fs::read_to_string(path).expect("read a document");
    let name = path
        .strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string();
    let mut blocks = Vec::new();
    let mut open: Option<(usize, Option<Kind>, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start().strip_prefix("```");
        match (&mut open, fence) {
            (None, Some(info)) => {
                let info = info.trim();
                let kind = match info {
                    "toml" => Some(Kind::Plan),
                    "toml steps" => Some(Kind::Steps),
                    "toml fragment" => Some(Kind::Fragment),
                    _ if info.starts_with("toml") => {
                        panic!("{name}:{}: unknown info string ```{info}", i + 1)
                    }
                    _ => None,
                };
                open = Some((i + 1, kind, String::new()));
            }
            (Some((line_no, kind, body)), Some(_)) => {
                if let Some(kind) = *kind {
                    blocks.push(Block {
                        at: format!("{name}:{line_no}"),
                        kind,
                        text: std::mem::take(body),
                    });
                }
                open = None;
            }
            (Some((_, _, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "{name}: a fenced block is not closed");
    blocks
}

/// The `VAR` of every `${VAR}` in `text`.
fn variables(text: &str) -> Vec<String> {
    text.split("${")
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(var, _)| var.to_string()))
        .collect()
}

/// The block as a whole plan, with a head in front of steps and fragments.
fn plan_text(block: &Block) -> String {
    match block.kind {
        Kind::Plan => block.text.clone(),
        Kind::Steps | Kind::Fragment => format!(
            "name = \"doc-example\"\ndatabase = \"${{DEMO_DATABASE_URL}}\"\n\n{}",
            block.text
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_toml_example_in_the_docs_parses_and_the_demo_ones_pass_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let demo = godwit::demo::prepare(&dir.path().join("demo"), 100)
        .await
        .expect("the demo database");
    let url = format!("sqlite://{}", demo.db_path.display());

    let blocks: Vec<Block> = documents()
        .iter()
        .flat_map(|doc| toml_blocks(doc))
        .collect();
    // The README's example and the pages' plan, transform and copy examples at least: a change
    // to the fences that hid them from this test fails here.
    assert!(blocks.len() >= 5, "only {} TOML blocks found", blocks.len());
    let mut checked = 0;
    for (i, block) in blocks.iter().enumerate() {
        let plan = plan_text(block);
        let file = dir.path().join(format!("doc-example-{i}.toml"));
        std::fs::write(&file, &plan).expect("write the plan");
        let env = |_: &str| Some(url.clone());
        if let Err(errors) = godwit::plan::parse(&plan, &file, &env) {
            panic!(
                "{}: the example does not parse:\n{errors}\n--- plan ---\n{plan}",
                block.at
            );
        }
        if block.kind == Kind::Fragment {
            continue;
        }
        let mut cmd = common::godwit();
        for var in variables(&plan) {
            cmd.env(var, &url);
        }
        let out = cmd
            .args(["check", path_str(&file)])
            .current_dir(dir.path())
            .output()
            .expect("run godwit check");
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: `godwit check` refuses the example:\nstdout {}\nstderr {}\n--- plan ---\n{plan}",
            block.at,
            text(&out.stdout),
            text(&out.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 3, "only {checked} examples checked");
}
