#!/usr/bin/env bash
# How soon the first batch commits on a large table: nothing is computed up front (the row
# count for progress runs in the background), so the first batch_done event should come within
# a second whatever the table size.
#
#   bench/pg-first-batch.sh [ROWS]     (default 10000000)
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-10000000}
eval "$(scripts/test-services.sh)"
url=$GODWIT_TEST_PG
cargo build --release -q
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
psql "$url" -v ON_ERROR_STOP=1 -qAt <<SQL
DROP TABLE IF EXISTS bench_big;
CREATE TABLE bench_big (id bigint PRIMARY KEY, phone text NOT NULL);
INSERT INTO bench_big SELECT i, CASE WHEN i % 3 = 0 THEN '0162' || lpad((i % 10000000)::text, 7, '0') ELSE '09' || lpad(i::text, 8, '0') END
FROM generate_series(1, $rows) AS i;
VACUUM ANALYZE bench_big;
SQL
cat > "$out/plan.toml" <<TOML
name = "bench-first-batch"
database = "$url"
[[steps]]
name = "rewrite"
table = "bench_big"
key = "id"
where = "length(phone) = 11"
sql = "UPDATE bench_big SET phone = '032' || substr(phone, 5) WHERE id BETWEEN :start AND :end AND length(phone) = 11"
TOML
start=$(date +%s.%N)
target/release/godwit run "$out/plan.toml" --json --restart --max-duration 5s | while read -r line; do
  case $line in
    *'"batch_done"'*) printf 'first batch committed after %.3fs on %s rows\n' "$(echo "$(date +%s.%N) - $start" | bc -l)" "$rows"; break ;;
  esac
done || true
psql "$url" -qAt -c "DROP TABLE bench_big" >/dev/null
