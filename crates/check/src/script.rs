//! Whether a step's transform can run: its program is there, its Lua loads.

use std::path::{Path, PathBuf};

use godwit_plan::Script;

use crate::judgement::StepJudgement;

/// Reports a transform that does not load, or a program that is not there.
pub(crate) fn script_ok(judged: &mut StepJudgement<'_>, script: &Script) {
    let plan_path = judged.plan.path.as_path();
    if let Script::Command(argv) = script {
        let dir = match plan_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Some(program) = argv.first().filter(|p| !program_exists(p, &dir)) {
            let what = format!(
                "the program {program:?} is neither a file relative to {} nor on PATH",
                dir.display()
            );
            judged.problem("invalid-transform", "command", &what, None);
        }
    }
    if let Err(e) = godwit_batch::build_transform(script, &judged.step.settings, plan_path) {
        judged.problem(
            "invalid-transform",
            script_key(script),
            &e.to_string(),
            None,
        );
    }
}

/// Whether `program` can be started from `dir`: a path (relative to `dir`) to a file, or a
/// name found on `PATH`.
fn program_exists(program: &str, dir: &Path) -> bool {
    if program.contains('/') {
        return dir.join(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(program).is_file()))
}

/// The plan key a transform's code was written under, for its location.
fn script_key(script: &Script) -> &'static str {
    match script {
        Script::Lua { file: Some(_), .. } => "lua_file",
        Script::Lua { .. } => "lua",
        Script::Command(_) => "command",
    }
}
