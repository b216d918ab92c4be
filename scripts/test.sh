#!/usr/bin/env bash
# The one command that sets up and runs every test, on a fresh Debian/Ubuntu machine too:
# starts (installing if needed) PostgreSQL and MariaDB, then runs the whole test suite
# against them and SQLite. A missing server fails the tests; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/test-services.sh)"
cargo build --workspace --all-targets --locked
cargo test --workspace --locked -- --test-threads=2
