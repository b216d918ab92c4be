#!/usr/bin/env bash
# How close `godwit estimate` comes (issue 15): on the phone rewrite of bench/pace.sh (2M rows,
# 666,666 changed, the filter only in the batch SQL), on PostgreSQL and MariaDB, and on the
# PostgreSQL table whose second half is 20x costlier: each round builds the table afresh, runs
# `godwit estimate --json`, then the real run, and prints the projection, its range, the run's
# time, the error and what estimating cost as a share of the run.
#
#   bench/estimate.sh [ROUNDS] [ROWS]        (defaults 2 rounds, 2000000 rows)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
rows=${2:-2000000}
. bench/lib.sh
mysql -h 127.0.0.1 -P 3306 -u godwit -pgodwit -e "CREATE DATABASE IF NOT EXISTS godwit_bench" 2>/dev/null
my_url=${GODWIT_TEST_MYSQL%/*}/godwit_bench
mysql_() { mysql -h 127.0.0.1 -P 3306 -u godwit -pgodwit godwit_bench -N -B "$@" 2>/dev/null; }
half=$((rows / 2))

build() {
  if [ "$1" = my ]; then
    mysql_ -e "DELETE FROM godwit_batches WHERE run = 'bench-estimate'; DELETE FROM godwit_steps WHERE run = 'bench-estimate'; DELETE FROM godwit_runs WHERE run = 'bench-estimate'" || true
    mysql_ <<SQL
DROP TABLE IF EXISTS bench_estimate;
CREATE TABLE bench_estimate (id BIGINT PRIMARY KEY, name VARCHAR(64) NOT NULL, phone VARCHAR(16) NOT NULL);
INSERT INTO bench_estimate SELECT seq, CONCAT('Customer ', seq),
  CASE WHEN seq % 3 = 0 THEN CONCAT('0162', LPAD(seq % 10000000, 7, '0')) ELSE CONCAT('09', LPAD(seq % 100000000, 8, '0')) END
FROM seq_1_to_$rows;
ANALYZE TABLE bench_estimate;
SQL
  else
    forget_run bench-estimate
    psql_ >/dev/null <<SQL
DROP TABLE IF EXISTS bench_estimate;
CREATE TABLE bench_estimate (id bigint PRIMARY KEY, name text NOT NULL, phone text NOT NULL);
INSERT INTO bench_estimate SELECT i, 'Customer ' || i,
  CASE WHEN i % 3 = 0 THEN '0162' || lpad((i % 10000000)::text, 7, '0') ELSE '09' || lpad((i % 100000000)::text, 8, '0') END
FROM generate_series(1, $rows) AS i;
VACUUM ANALYZE bench_estimate;
CHECKPOINT;
SQL
  fi
}

# plan DB SKEW: the plan file's path.
plan() {
  local db=$1 skew=$2 u=$url set="'032' || substr(phone, 5)"
  if [ "$db" = my ]; then u=$my_url; set="CONCAT('032', SUBSTR(phone, 5))"; fi
  [ "$skew" = skew ] && set="$set || CASE WHEN id > $half AND length(repeat(md5(phone), 400)) < 0 THEN 'x' ELSE '' END"
  cat > "$out/plan.toml" <<TOML
name = "bench-estimate"
database = "$u"
[[steps]]
name = "phones"
table = "bench_estimate"
key = "id"
sql = "UPDATE bench_estimate SET phone = $set WHERE id BETWEEN :start AND :end AND length(phone) = 11"
TOML
  echo "$out/plan.toml"
}

now() { date +%s.%N; }
for r in $(seq 1 "$rounds"); do
  for case in "pg plain" "my plain" "pg skew"; do
    set -- $case
    build "$1"
    p=$(plan "$1" "$2")
    t0=$(now)
    json=$("$bin" estimate "$p" --json)
    t1=$(now)
    "$bin" run "$p" --quiet
    t2=$(now)
    echo "$json" | python3 -c "
import json, sys
e = json.load(sys.stdin); est, run = $t1 - $t0, $t2 - $t1
print(f'round $r, $1 $2: projected {e[\"projected_seconds\"]:.2f}s ({e[\"low_seconds\"]:.2f}-{e[\"high_seconds\"]:.2f}), run {run:.2f}s, error {(e[\"projected_seconds\"] - run) / run * 100:+.0f}%, within range: {e[\"low_seconds\"] <= run <= e[\"high_seconds\"]}, estimate took {est:.2f}s = {est / run * 100:.0f}% of the run, {e[\"steps\"][0][\"sampled_batches\"]} batches sampled')
"
  done
done
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(psql_ -c 'SHOW server_version'), $(mysql_ -e 'SELECT VERSION()'), $(uname -r)"
