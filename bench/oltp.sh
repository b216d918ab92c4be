#!/usr/bin/env bash
# An application beside a migration of its own table (issue 13): pgbench's TPC-B-like load at a
# fixed rate (`-R`, default 200 transactions/s) on its own tables, alone and then beside a
# backfill of `pgbench_accounts` (every row rewritten): one monolithic UPDATE, godwit at the
# defaults (100 ms batches), with `target_batch_time` 500 ms and 20 ms, with the latency guard at 2x, and the
# same rewrite as a Lua transform in both `locking` modes (optimistic, the default: rows read
# and transformed before the batch's transaction and written only where unchanged; rows: rows
# locked while the script runs), then optimistic with the guard. For each: the client's p50/p99
# latency, its failed transactions (deadlocks, lock timeouts: pgbench's own count), how long
# the backfill took, the rows it had rewritten when the load ended (the throughput it kept
# beside it), and whether pgbench's balances still add up afterwards.
#
#   bench/oltp.sh [SCALE] [RATE] [SECONDS]     (defaults 10 = 1M accounts, 200/s, 30 s)
#
# ONLY=REGEX runs only the contenders whose label matches (the idle load always runs), for
# example `ONLY=guard` to compare two builds' latency guards (GODWIT_BIN names each build).
set -euo pipefail
cd "$(dirname "$0")/.."
scale=${1:-10}
rate=${2:-200}
secs=${3:-30}
. bench/lib.sh

pgbench_() { pgbench "$url" "$@"; }

fresh() {
  forget_run bench-oltp
  pgbench_ -i -q -s "$scale" --foreign-keys >/dev/null 2>&1
  psql_ -c "VACUUM ANALYZE" >/dev/null
}

# load: runs pgbench for $secs at $rate in the background, logging each transaction; sets
# `load_pid`.
load() {
  rm -f "$out"/load.*
  pgbench_ -n -R "$rate" -T "$secs" -c 4 -j 2 --max-tries=1 --failures-detailed \
    -l --log-prefix="$out/load" > "$out/load.out" 2>&1 &
  load_pid=$!
}

# report LABEL SECONDS_OF_BACKFILL ROWS_DONE_WHEN_THE_LOAD_ENDED: what the last load saw.
report() {
  local label=$1 took=$2 done_rows=$3 p50 p99 failed
  read -r p50 p99 < <(cat "$out"/load.[0-9]* | awk '{print $3}' | sort -n |
    awk '{a[NR]=$1} END {printf "%.1f %.1f\n", a[int(NR*0.5)]/1000, a[int(NR*0.99)]/1000}')
  failed=$(grep -E "number of failed transactions" "$out/load.out" | sed 's/.*: //')
  local sums
  sums=$(psql_ -c "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(bbalance) FROM pgbench_branches)
                   AND (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(tbalance) FROM pgbench_tellers)
                   AND (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history)")
  printf '%-34s p50 %6s ms  p99 %7s ms  failed: %-28s backfill %7s  rows by the load'"'"'s end %8s  balances add up: %s\n' \
    "$label" "$p50" "$p99" "$failed" "$took" "$done_rows" "$sums"
}

backfill_sql="UPDATE pgbench_accounts SET filler = md5(aid::text)"
# plan DEFAULTS [TOP]: the SQL backfill with DEFAULTS in [defaults] and TOP at the top.
plan() {
  cat > "$out/plan.toml" <<TOML
name = "bench-oltp"
database = "$url"
${2:-}
[defaults]
$1
[[steps]]
name = "accounts"
table = "pgbench_accounts"
key = "aid"
sql = "UPDATE pgbench_accounts SET filler = md5(aid::text) WHERE aid BETWEEN :start AND :end"
TOML
}
# lua_plan LOCKING [TOP]: the same rewrite as a Lua transform with `locking = LOCKING`
# ("optimistic": the script runs before each batch's transaction; "rows": rows locked while it
# runs).
lua_plan() {
  cat > "$out/plan.toml" <<TOML
name = "bench-oltp"
database = "$url"
${2:-}
[defaults]
locking = "$1"
[[steps]]
name = "accounts"
table = "pgbench_accounts"
key = "aid"
columns = ["filler"]
lua = "function transform(row) return { filler = 'lua ' .. row.aid } end"
TOML
}
rewritten() {
  psql_ -c "SELECT count(*) FROM pgbench_accounts WHERE filler = md5(aid::text) OR filler LIKE 'lua %'"
}

now() { date +%s.%N; }
# beside LABEL COMMAND...: the load, and the command started a second into it.
beside() {
  local label=$1 t0 t1 cmd done_rows=""
  shift
  if [ -n "${ONLY:-}" ] && ! [[ $label =~ $ONLY ]]; then return; fi
  fresh
  load
  sleep 1
  t0=$(now)
  "$@" >/dev/null &
  cmd=$!
  # Whichever ends first: the rows rewritten when the load ends are what the backfill kept
  # beside it.
  while kill -0 "$load_pid" 2>/dev/null && kill -0 "$cmd" 2>/dev/null; do sleep 0.2; done
  if ! kill -0 "$load_pid" 2>/dev/null; then done_rows=$(rewritten); fi
  wait "$cmd"
  t1=$(now)
  wait "$load_pid" || true
  [ -n "$done_rows" ] || done_rows="all"
  report "$label" "$(printf '%.1fs' "$(echo "$t1 - $t0" | bc -l)")" "$done_rows"
}

fresh
load
wait "$load_pid" || true
report "idle (no migration)" "-" "-"
beside "one UPDATE" psql_ -c "$backfill_sql"
plan ""
beside "godwit, defaults (100 ms)" "$bin" run "$out/plan.toml" --quiet
plan 'target_batch_time = "500ms"'
beside "godwit, target_batch_time 500ms" "$bin" run "$out/plan.toml" --quiet
plan 'target_batch_time = "20ms"'
beside "godwit, target_batch_time 20ms" "$bin" run "$out/plan.toml" --quiet
plan "" 'max_latency_increase = "2x"'
beside "godwit, latency guard 2x" "$bin" run "$out/plan.toml" --quiet
lua_plan optimistic
beside "godwit Lua, optimistic (default)" "$bin" run "$out/plan.toml" --quiet
lua_plan rows
beside "godwit Lua, locking rows" "$bin" run "$out/plan.toml" --quiet
lua_plan optimistic 'max_latency_increase = "2x"'
beside "godwit Lua, optimistic, guard 2x" "$bin" run "$out/plan.toml" --quiet
echo "pgbench -R $rate -c 4 for ${secs}s, scale $scale; machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(psql_ -c 'SHOW server_version'), $(uname -r)"
