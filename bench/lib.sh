# Shared by the benchmark scripts: sourced from the repository root, it starts the test
# services, builds godwit in release mode (unless GODWIT_BIN names a binary to measure) and
# sets `url` (the test PostgreSQL), `bin` (the binary) and `out` (a temporary directory removed
# on exit).

eval "$(scripts/test-services.sh)"
# A database of the benchmarks' own: the tests' state tables may be of another godwit version
# than the one measured, and the tests' load must not meet the benchmarks'.
psql "$GODWIT_TEST_PG" -qAt -c "SELECT 1 FROM pg_database WHERE datname = 'godwit_bench'" | grep -q 1 ||
  psql "$GODWIT_TEST_PG" -q -c "CREATE DATABASE godwit_bench"
url=${GODWIT_TEST_PG%/*}/godwit_bench
if [ -z "${GODWIT_BIN:-}" ]; then
  cargo build --release -q
  GODWIT_BIN=$PWD/target/release/godwit
fi
bin=$GODWIT_BIN
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

psql_() { psql "$url" -v ON_ERROR_STOP=1 -qAt "$@"; }

# forget_run NAME: removes run NAME from godwit's state tables, so that it starts afresh.
forget_run() {
  psql_ >/dev/null <<SQL
DO \$\$ BEGIN
  IF to_regclass('godwit_dead_letters') IS NOT NULL THEN
    DELETE FROM godwit_dead_letters WHERE run = '$1';
  END IF;
  IF to_regclass('godwit_runs') IS NOT NULL THEN
    DELETE FROM godwit_batches WHERE run = '$1';
    DELETE FROM godwit_steps WHERE run = '$1';
    DELETE FROM godwit_runs WHERE run = '$1';
  END IF;
END \$\$;
SQL
}

# The CPU seconds every PostgreSQL process on this machine has used: live processes' own,
# plus what the postmaster collected from its ended children (a godwit run's backends).
pg_cpu() {
  local tick total=0 pid fields
  tick=$(getconf CLK_TCK)
  for pid in $(pgrep -x postgres; pgrep -f '^postgres: '); do
    fields=$(cut -d')' -f2- "/proc/$pid/stat" 2>/dev/null) || continue
    # Fields after the command: utime, stime, cutime, cstime are the 12th-15th.
    total=$(echo "$fields" | awk -v t="$total" '{print t + $12 + $13 + $14 + $15}')
  done
  echo "$total / $tick" | bc -l
}
