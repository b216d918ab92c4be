#!/usr/bin/env bash
# Memory of a copy of wide rows, side by side in one run: 2,000 rows of 256 KB (500 MB) copied
# within PostgreSQL at batch_size 500 and concurrency 4, once with `max_batch_bytes` at 8 MiB
# and once with a cap so large it never slices (each batch then holds 125 MB of rows). The
# database is named as the step's `source`, so that the rows pass through godwit (binary COPY):
# within one database the copy would be an `INSERT … SELECT` that never reads a row.
#
#   bench/wide-rows.sh
#
# Prints seconds and godwit's peak RSS. Needs PostgreSQL (scripts/test-services.sh starts it);
# builds in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

psql_ <<SQL
DROP TABLE IF EXISTS bench_wide_src, bench_wide_dst;
CREATE TABLE bench_wide_src (id bigint PRIMARY KEY, body text NOT NULL);
ALTER TABLE bench_wide_src ALTER COLUMN body SET STORAGE EXTERNAL;
INSERT INTO bench_wide_src SELECT i, repeat(md5(i::text), 8192) FROM generate_series(1, 2000) i;
CREATE TABLE bench_wide_dst (LIKE bench_wide_src INCLUDING ALL);
SQL

run() {
  local label=$1 cap=$2
  psql_ -c "TRUNCATE bench_wide_dst"
  forget_run bench-wide
  cat > "$out/plan.toml" <<TOML
name = "bench-wide"
database = "$url"

[[steps]]
name = "wide"
source = "$url"
table = "bench_wide_src"
key = "id"
into = "bench_wide_dst"
batch_size = 500
max_batch_bytes = "$cap"
TOML
  local t0 t1
  t0=$(date +%s.%N)
  /usr/bin/time -f '%M' -o "$out/rss" "$bin" run "$out/plan.toml" --quiet --concurrency 4
  t1=$(date +%s.%N)
  printf '%-32s %6.2fs  peak RSS %s MiB\n' "$label" "$(echo "$t1 - $t0" | bc -l)" \
    "$(( $(cat "$out/rss") / 1024 ))"
}

echo "2,000 rows x 256 KB, batch_size 500, concurrency 4"
run "max_batch_bytes = 8MiB" "8MiB"
run "max_batch_bytes = 4GiB (no slices)" "4GiB"
psql_ -c "DROP TABLE bench_wide_src, bench_wide_dst"
