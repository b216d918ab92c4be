#!/usr/bin/env bash
# How many claim-and-commit cycles per second one PostgreSQL state database sustains: a
# chunked step whose batches do no work (`UPDATE … WHERE id BETWEEN :start AND :end AND false`,
# batch_size 1), so every batch is pure coordination: walk one key, claim it, run the empty
# statement, record it done, commit.
#
#   bench/coordinator.sh [ROWS] [SECONDS] [REPEATS]     (defaults 200000, 10, 3)
#
# Side by side in one run, each configuration REPEATS times (interleaved, so that a noisy
# minute hits every configuration alike), the median reported:
#   * godwit, workers = processes × --concurrency: 1×8, 1×32, 4×8, 8×4 and 32×1 (skipped when
#     the server has too few connections: a process holds concurrency + 3 of them);
#   * godwit 4×8 with `synchronous_commit=off` on every session (through the URL's options), a
#     diagnostic of what the claims' synchronous commits cost;
#   * pgbench on a queue table, one `FOR UPDATE SKIP LOCKED` claim transaction and one done
#     transaction per job, at 8 and 32 clients: what the server does without godwit;
#   * the latency of one synchronous commit, since every claim waits for one.
# Every godwit run is a fresh run name (fresh state rows) started together in all its
# processes, stopped by --max-duration SECONDS; the rate is the done batches whose commit falls
# between 1 s after the first claim and 1 s before the last commit (a tenth of the run in runs
# under 10 s), per second.
#
# The database is $GODWIT_BENCH_PG if set, else the test database of scripts/test-services.sh.
# 32×1 needs about 128 connections; a server of the benchmark's own, with more of them, keeps
# it off a shared one, e.g. (Debian's PostgreSQL 15):
#
#   pg_createcluster 15 bench --port 5441 -- --auth-host=trust
#   echo "max_connections = 300" > /etc/postgresql/15/bench/conf.d/90-bench.conf
#   pg_ctlcluster 15 bench start && createdb -h 127.0.0.1 -p 5441 -U postgres godwit_bench
#   GODWIT_BENCH_PG=postgres://postgres@127.0.0.1:5441/godwit_bench bench/coordinator.sh
#
# The godwit binary is this tree's release build, or $GODWIT_BIN. To compare builds side by
# side in one run, GODWIT_BINS="LABEL=PATH LABEL=PATH …" runs every godwit configuration with
# each of them in turn (the same repetition, one after the other), labelled. CONFIGS="1x8 8x4"
# runs only those godwit configurations (default: 1x8 1x32 4x8 8x4 32x1 and the 4x8 async
# diagnostic, "4x8a").
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-200000}
secs=${2:-10}
repeats=${3:-3}
eval "$(scripts/test-services.sh)"
url=${GODWIT_BENCH_PG:-$GODWIT_TEST_PG}
declare -A bins=()
bin_labels=()
if [[ -n ${GODWIT_BINS:-} ]]; then
  for pair in $GODWIT_BINS; do
    bins[${pair%%=*}]=${pair#*=}
    bin_labels+=("${pair%%=*}")
  done
else
  if [[ -z ${GODWIT_BIN:-} ]]; then
    cargo build --release -q -p godwit-cli
  fi
  bins[godwit]=${GODWIT_BIN:-target/release/godwit}
  bin_labels=(godwit)
fi
for b in "${bin_labels[@]}"; do
  [[ -x ${bins[$b]} ]] || { echo "no godwit binary at ${bins[$b]}" >&2; exit 1; }
done
bin=${bins[${bin_labels[0]}]}
configs=${CONFIGS:-1x8 1x32 4x8 8x4 32x1 4x8a}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

psql_() { psql "$url" -v ON_ERROR_STOP=1 -qAt "$@"; }

# forget RUN_PATTERN: deletes the state rows of the runs matching a LIKE pattern, in every
# godwit_* table (not view) that has a `run` column.
forget() {
  psql_ <<SQL
DO \$\$ DECLARE t text; BEGIN
  FOR t IN SELECT c.table_name FROM information_schema.columns c
           JOIN information_schema.tables USING (table_schema, table_name)
           WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
             AND c.table_name LIKE 'godwit\\_%' AND c.column_name = 'run'
           ORDER BY c.table_name = 'godwit_runs', c.table_name LOOP
    EXECUTE format('DELETE FROM %I WHERE run LIKE %L', t, '$1');
  END LOOP;
END \$\$;
SQL
}

forget_runs() {
  forget 'bench-coord-%'
  if [[ $(psql_ -c "SELECT to_regclass('godwit_batches') IS NOT NULL") == t ]]; then
    psql_ -c "VACUUM godwit_batches, godwit_steps, godwit_runs"
  fi
}

psql_ <<SQL
SET client_min_messages = warning;
DROP TABLE IF EXISTS bench_claims, bench_queue, bench_commits;
CREATE TABLE bench_commits (x integer);
CREATE TABLE bench_claims (id integer PRIMARY KEY, v integer NOT NULL DEFAULT 0);
INSERT INTO bench_claims (id) SELECT generate_series(1, $rows);
CREATE TABLE bench_queue (id integer PRIMARY KEY, state smallint NOT NULL,
                          claimed_at timestamptz, finished_at timestamptz);
CREATE INDEX bench_queue_pending ON bench_queue (id) WHERE state = 0;
SQL
psql_ -c "VACUUM ANALYZE bench_claims"
forget_runs

# The connections a configuration may use: what the server allows, less what others hold now
# and a margin for them.
max_conn=$(psql_ -c "SELECT current_setting('max_connections')::int - count(*) - 10 FROM pg_stat_activity")

# plan NAME [URL]: a plan with one chunked step of empty batches.
plan() {
  cat > "$out/$1.toml" <<TOML
name = "$1"
database = "${2:-$url}"
[defaults]
batch_size = 1
# Fixed: batches sized by time would grow these empty batches to the whole table.
adaptive = false
[[steps]]
name = "noop"
table = "bench_claims"
key = "id"
sql = "UPDATE bench_claims SET v = v WHERE id BETWEEN :start AND :end AND false"
TOML
}

# The state tables, created by one process before many race to create them; not measured.
plan bench-coord-warmup
"$bin" run "$out/bench-coord-warmup.toml" --quiet --concurrency 4 --max-duration 2s || [[ $? == 75 ]]

declare -A rates=()
sep='?'
[[ $url == *'?'* ]] && sep='&'

# godwit_run BINARY LABEL PROCESSES CONCURRENCY REPEAT [URL]
godwit_run() {
  local who=$1 label=$2 procs=$3 conc=$4 rep=$5 run_url=${6:-$url}
  local bin=${bins[$who]}
  label="$who $label"
  local run="bench-coord-${label//[^a-z0-9]/-}-r$rep"
  if ((procs * (conc + 3) > max_conn)); then
    printf '%-32s skipped: needs ~%d connections, the server has %d free\n' \
      "$label" $((procs * (conc + 3))) "$max_conn"
    return
  fi
  plan "$run" "$run_url"
  local pids=() i rc failed=0
  for ((i = 0; i < procs; i++)); do
    "$bin" run "$out/$run.toml" --quiet --concurrency "$conc" --max-duration "${secs}s" \
      2>"$out/$run.$i.err" &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    rc=0
    wait "${pids[$i]}" || rc=$?
    if [[ $rc != 0 && $rc != 75 ]]; then
      failed=1
      echo "$label process $i exited $rc:" >&2
      cat "$out/$run.$i.err" >&2
    fi
  done
  local line
  line=$(psql_ -F ' ' <<SQL
WITH b AS (SELECT finished_ms, claimed_ms FROM godwit_batches WHERE run = '$run' AND state = 'done'),
     s AS (SELECT min(claimed_ms) AS a, max(finished_ms) AS z FROM b),
     w AS (SELECT a + least(1000, (z - a) / 10) AS t0, z - least(1000, (z - a) / 10) AS t1, z - a AS span FROM s)
SELECT (SELECT count(*) FROM b), w.span,
       round((SELECT count(*) FROM b WHERE finished_ms BETWEEN w.t0 AND w.t1) * 1000.0 / nullif(w.t1 - w.t0, 0))
FROM w
SQL
  )
  local n_done span rate
  read -r n_done span rate <<<"$line"
  rate=${rate:-0}
  ((failed)) && rate=0
  printf '%-32s run %d: %7d batches in %6.2fs, %6d/s\n' "$label" "$rep" "$n_done" \
    "$(echo "${span:-0} / 1000" | bc -l)" "$rate"
  rates[$label]+="$rate "
  forget "$run"
}

cat > "$out/queue.sql" <<'SQL'
WITH c AS (
  UPDATE bench_queue SET state = 1, claimed_at = clock_timestamp()
  WHERE id = (SELECT id FROM bench_queue WHERE state = 0 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
  RETURNING id)
SELECT coalesce(max(id), 0) AS job FROM c \gset
UPDATE bench_queue SET state = 2, finished_at = clock_timestamp() WHERE id = :job;
SQL

# pgbench_run CLIENTS REPEAT
pgbench_run() {
  local clients=$1 rep=$2 label="pgbench $1 clients"
  psql_ -c "TRUNCATE bench_queue" -c "INSERT INTO bench_queue (id, state) SELECT i, 0 FROM generate_series(1, $rows) i"
  psql_ -c "VACUUM ANALYZE bench_queue"
  pgbench -n -M prepared -c "$clients" -j 2 -T "$secs" -f "$out/queue.sql" "$url" >"$out/pgbench.out" 2>&1 || {
    cat "$out/pgbench.out" >&2
    return 1
  }
  local rate left
  rate=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$out/pgbench.out" | head -n 1)
  left=$(psql_ -c "SELECT count(*) FROM bench_queue WHERE state = 0")
  printf '%-26s run %d: %7.0f jobs/s (claim + done transactions), %s jobs left in the queue\n' \
    "$label" "$rep" "$rate" "$left"
  rates[$label]+="$(printf '%.0f' "$rate") "
}

# The latency of one synchronous commit now (one client inserting one row): every claim waits
# for one while it holds the step's cursor row, and this machine's disk latency varies a lot.
echo 'INSERT INTO bench_commits VALUES (1);' >"$out/commit.sql"
commit_latency() {
  local ms
  ms=$(pgbench -n -c 1 -T 2 -f "$out/commit.sql" "$url" 2>&1 | sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p')
  printf '%-26s run %d: %s ms\n' "synchronous commit" "$1" "$ms"
  rates[commit]+="$ms "
}

godwit_configs=("1x8 1 8" "1x32 1 32" "4x8 4 8" "8x4 8 4" "32x1 32 1")
for ((rep = 1; rep <= repeats; rep++)); do
  commit_latency "$rep"
  for config in "${godwit_configs[@]}"; do
    read -r label procs conc <<<"$config"
    [[ " $configs " == *" $label "* ]] || continue
    for who in "${bin_labels[@]}"; do
      godwit_run "$who" "$label" "$procs" "$conc" "$rep"
    done
  done
  if [[ " $configs " == *" 4x8a "* ]]; then
    for who in "${bin_labels[@]}"; do
      godwit_run "$who" "4x8 async" 4 8 "$rep" "$url$sep""options[synchronous_commit]=off"
    done
  fi
  pgbench_run 8 "$rep"
  pgbench_run 32 "$rep"
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
base8=$(median <<<"${rates[pgbench 8 clients]}")
base32=$(median <<<"${rates[pgbench 32 clients]}")
echo
printf '%-34s %8s %9s  %s\n' "what (processes x concurrency)" "median/s" "vs pgbench" "runs"
labels=()
for c in "1x8" "1x32" "4x8" "8x4" "32x1" "4x8 async"; do
  for who in "${bin_labels[@]}"; do labels+=("$who $c"); done
done
for label in "${labels[@]}" "pgbench 8 clients" "pgbench 32 clients"; do
  key=$label
  [[ -n ${rates[$key]:-} ]] || continue
  m=$(median <<<"${rates[$key]}")
  case $label in
    *" 1x8" | "pgbench 8"*) base=$base8 ;;
    *) base=$base32 ;;
  esac
  printf '%-34s %8.0f %8.2fx  %s\n' "$label" "$m" "$(echo "$m / $base" | bc -l)" "${rates[$key]}"
done
echo "(godwit at 8 workers is compared with pgbench at 8 clients, the rest with 32 clients)"
printf '%-28s %8.2f ms       %s\n' "one synchronous commit" "$(median <<<"${rates[commit]}")" "${rates[commit]}"
psql_ -c "DROP TABLE bench_claims, bench_queue, bench_commits"
forget_runs
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(psql_ -c 'SHOW server_version'), $(uname -r)"
