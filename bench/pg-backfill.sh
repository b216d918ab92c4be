#!/usr/bin/env bash
# The issue's PostgreSQL reference, side by side in one run: a 2M-row `customers` table with an
# index on `phone`, 666,666 of them carrying an 11-digit number to rewrite.
#
#   bench/pg-backfill.sh [ROWS]        (default 2000000)
#
# Measures, each on a freshly built table: one monolithic UPDATE, then `godwit run` at its
# defaults (and at a few concurrencies). Prints seconds, rows/s, the ratio to the single
# statement, and godwit's peak RSS. Needs PostgreSQL (scripts/test-services.sh starts it) and
# builds godwit in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-2000000}
. bench/lib.sh

build_table() {
  forget_run bench-backfill
  psql_ <<SQL
DROP TABLE IF EXISTS bench_customers;
CREATE TABLE bench_customers (id bigint PRIMARY KEY, name text NOT NULL, phone text NOT NULL);
INSERT INTO bench_customers
SELECT i, 'Customer ' || i,
       CASE WHEN i % 3 = 0 THEN '0162' || lpad((i % 10000000)::text, 7, '0')
            ELSE '09' || lpad((i % 100000000)::text, 8, '0') END
FROM generate_series(1, $rows) AS i;
CREATE INDEX bench_customers_phone ON bench_customers (phone);
VACUUM ANALYZE bench_customers;
CHECKPOINT;
SQL
}

update_sql="UPDATE bench_customers SET phone = '032' || substr(phone, 5) WHERE length(phone) = 11"
now() { date +%s.%N; }

build_table
t0=$(now); psql_ -c "$update_sql" >/dev/null; t1=$(now)
single=$(echo "$t1 - $t0" | bc -l)
changed=$(psql_ -c "SELECT count(*) FROM bench_customers WHERE phone LIKE '032%'")
printf 'single UPDATE: %.2fs, %s rows, %.0f rows/s\n' "$single" "$changed" "$(echo "$changed / $single" | bc -l)"

run_godwit() {
  local label=$1 extra=$2
  build_table
  cat > "$out/plan.toml" <<TOML
name = "bench-backfill"
database = "$url"
$extra
[[steps]]
name = "rewrite"
table = "bench_customers"
key = "id"
where = "length(phone) = 11"
sql = "UPDATE bench_customers SET phone = '032' || substr(phone, 5) WHERE id BETWEEN :start AND :end AND length(phone) = 11"
TOML
  shift 2
  t0=$(now)
  /usr/bin/time -f '%M' -o "$out/rss" "$bin" run "$out/plan.toml" --quiet "$@"
  t1=$(now)
  local secs rss left
  secs=$(echo "$t1 - $t0" | bc -l)
  rss=$(cat "$out/rss")
  left=$(psql_ -c "SELECT count(*) FROM bench_customers WHERE length(phone) = 11")
  printf 'godwit %-28s %.2fs, %.0f rows/s, %.2fx the single UPDATE, peak RSS %d MiB, %s rows left\n' \
    "$label" "$secs" "$(echo "$changed / $secs" | bc -l)" "$(echo "$secs / $single" | bc -l)" $((rss / 1024)) "$left"
}

run_godwit "(defaults)" ""
run_godwit "(batch_size 10000)" $'[defaults]\nbatch_size = 10000'
run_godwit "(concurrency 2)" "" --concurrency 2
run_godwit "(concurrency 8)" "" --concurrency 8
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(psql_ -c 'SHOW server_version'), $(uname -r)"
