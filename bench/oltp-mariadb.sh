#!/usr/bin/env bash
# An application beside a migration of its own table on MariaDB (issue 13, "yield to the
# application"): sysbench's `oltp_read_write` at a fixed rate (default 200 transactions/s, 4
# threads) on a 1M-row `sbtest1`, alone and beside a rewrite of every row's `pad` column: one
# monolithic UPDATE, godwit at the defaults (100 ms batches), with 500 ms batches, and the same
# rewrite as a Lua transform in both `locking` modes (optimistic, the default; rows). For each: the client's p99 latency, the deadlocks and lock wait
# timeouts it met (sysbench's "ignored errors": it retries those) and how long the backfill
# took. (Rows sysbench deletes and inserts again after a batch passed them keep their new pad;
# the run's own end says every batch committed.) Every contender starts from a fresh copy of
# the same table; the contenders take turns within each round.
#
#   bench/oltp-mariadb.sh [ROUNDS] [RATE] [SECONDS] [ROWS]   (defaults 3, 200/s, 30 s, 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
rate=${2:-200}
secs=${3:-30}
rows=${4:-1000000}
. bench/lib.sh
command -v sysbench >/dev/null || {
  echo "sysbench is not installed: apt-get install sysbench" >&2
  exit 2
}
mysql -h 127.0.0.1 -P 3306 -u godwit -pgodwit -e "CREATE DATABASE IF NOT EXISTS godwit_bench"
my_url=${GODWIT_TEST_MYSQL%/*}/godwit_bench
mysql_() { mysql -h 127.0.0.1 -P 3306 -u godwit -pgodwit godwit_bench -N -B "$@"; }
sysbench_() {
  sysbench oltp_read_write --db-driver=mysql --mysql-host=127.0.0.1 --mysql-port=3306 \
    --mysql-user=godwit --mysql-password=godwit --mysql-db=godwit_bench \
    --tables=1 --table-size="$rows" "$@"
}

# The table every contender starts from, built once: sysbench's own, kept as sbtest_base.
mysql_ -e "DROP TABLE IF EXISTS sbtest1, sbtest_base"
sysbench_ prepare >/dev/null
mysql_ -e "RENAME TABLE sbtest1 TO sbtest_base"

fresh() {
  mysql_ -e "DELETE FROM godwit_batches WHERE run = 'bench-oltp-my';
             DELETE FROM godwit_steps WHERE run = 'bench-oltp-my';
             DELETE FROM godwit_runs WHERE run = 'bench-oltp-my'" 2>/dev/null || true
  mysql_ -e "DROP TABLE IF EXISTS sbtest1; CREATE TABLE sbtest1 LIKE sbtest_base;
             INSERT INTO sbtest1 SELECT * FROM sbtest_base; ANALYZE TABLE sbtest1" >/dev/null
}

load() {
  sysbench_ --threads=4 --rate="$rate" --time="$secs" --percentile=99 run > "$out/load.out" 2>&1 &
  load_pid=$!
}

declare -A errors p99s
# report LABEL TOOK: what the last load saw.
report() {
  local label=$1 took=$2 p99 errs
  p99=$(awk '/99th percentile:/ {print $3}' "$out/load.out")
  errs=$(awk '/ignored errors:/ {print $3}' "$out/load.out")
  [ -n "$p99" ] && [ -n "$errs" ] || { cat "$out/load.out" >&2; exit 1; }
  errors[$label]+="$errs "
  p99s[$label]+="$p99 "
  printf '%-34s p99 %8s ms  deadlocks + lock timeouts: %3s  backfill %7s\n' \
    "$label" "$p99" "$errs" "$took"
}

backfill_sql="UPDATE sbtest1 SET pad = CONCAT('new ', id)"
plan() {
  cat > "$out/plan.toml" <<TOML
name = "bench-oltp-my"
database = "$my_url"
[defaults]
$1
[[steps]]
name = "pad"
table = "sbtest1"
key = "id"
sql = "UPDATE sbtest1 SET pad = CONCAT('new ', id) WHERE id BETWEEN :start AND :end"
TOML
}
lua_plan() {
  cat > "$out/plan.toml" <<TOML
name = "bench-oltp-my"
database = "$my_url"
[defaults]
$1
[[steps]]
name = "pad"
table = "sbtest1"
key = "id"
columns = ["pad"]
lua = "function transform(row) return { pad = 'new ' .. row.id } end"
TOML
}

now() { date +%s.%N; }
# beside LABEL COMMAND...: the load, and the command started a second into it.
beside() {
  local label=$1 t0 t1
  shift
  fresh
  load
  sleep 1
  t0=$(now)
  "$@" >/dev/null
  t1=$(now)
  wait "$load_pid"
  report "$label" "$(printf '%.1fs' "$(echo "$t1 - $t0" | bc -l)")"
}

for round in $(seq "$rounds"); do
  echo "round $round"
  fresh
  load
  wait "$load_pid"
  report "idle (no migration)" "-"
  beside "one UPDATE" mysql_ -e "$backfill_sql"
  plan ""
  beside "godwit, defaults (100 ms)" "$bin" run "$out/plan.toml" --quiet
  plan 'target_batch_time = "500ms"'
  beside "godwit, target_batch_time 500ms" "$bin" run "$out/plan.toml" --quiet
  lua_plan 'locking = "optimistic"'
  beside "godwit Lua, optimistic (default)" "$bin" run "$out/plan.toml" --quiet
  lua_plan 'locking = "rows"'
  beside "godwit Lua, locking rows" "$bin" run "$out/plan.toml" --quiet
done
echo "over $rounds rounds: p99 (ms) and sysbench's deadlocks + lock wait timeouts, run by run:"
for label in "idle (no migration)" "one UPDATE" "godwit, defaults (100 ms)" \
  "godwit, target_batch_time 500ms" "godwit Lua, optimistic (default)" \
  "godwit Lua, locking rows"; do
  printf '  %-34s p99 %-26s errors %s\n' "$label" "${p99s[$label]}" "${errors[$label]}"
done
echo "sysbench oltp_read_write --rate $rate --threads 4 for ${secs}s on $rows rows; machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, MariaDB $(mysql_ -e 'SELECT VERSION()'), $(sysbench --version), $(uname -r)"
mysql_ -e "DROP TABLE IF EXISTS sbtest1, sbtest_base"
