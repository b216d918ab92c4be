#!/usr/bin/env bash
# The one command that sets up and runs every test, on a fresh Debian/Ubuntu machine too:
# starts (installing if needed) PostgreSQL and MariaDB, then runs the whole test suite
# against them and SQLite. A missing server fails the tests; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/test-services.sh)"
cargo build --workspace --all-targets --locked
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked --no-fail-fast -- --test-threads=2 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole workspace (cargo prints one per test binary).
sum() { grep -E '^test result:' "$log" | sed -E "s/.* ([0-9]+) $1.*/\1/" | paste -sd+ - | bc; }
echo "tests: $(sum passed) passed, $(sum failed) failed"
exit "$status"
