//! A step's transform as the plan writes it (`lua`, `lua_file` or `command`), made ready to
//! run: shared by transform steps, copies and `godwit check`.

use std::path::{Path, PathBuf};

use godwit_driver::Result;
use godwit_plan::{Script, Settings};
use godwit_transform::{Limits, Source, Transform};

/// Compiles a step's Lua, or prepares its program, once for this process.
pub fn build_transform(
    script: &Script,
    settings: &Settings,
    plan_path: &Path,
) -> Result<Transform> {
    let limits = Limits {
        row_timeout: settings.row_timeout,
        lua_memory: settings.lua_memory,
        max_line_bytes: settings.max_batch_bytes,
    };
    let plan_dir = match plan_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match script {
        Script::Lua {
            code,
            file,
            first_line,
        } => Transform::lua(
            Source {
                code: code.clone(),
                file: file.clone().unwrap_or_else(|| plan_path.to_path_buf()),
                first_line: *first_line,
            },
            limits,
        ),
        Script::Command(argv) => Ok(Transform::command(argv.clone(), plan_dir, limits)),
    }
}
