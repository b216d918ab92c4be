#!/usr/bin/env bash
# Row transforms on PostgreSQL, side by side in one run: the phone rewrite of
# examples/vn-phones*.toml as a chunked SQL step, as a Lua transform and as a Python program,
# on a freshly built table each time; then the Lua transform on 10x the rows, for memory.
#
#   bench/transforms.sh [ROWS]        (default 300000; a third of them are rewritten)
#
# Prints seconds, rewritten rows/s, godwit's and PostgreSQL's CPU, the cost per rewritten row
# over the SQL step, and peak RSS.
# Needs PostgreSQL and python3 (scripts/test-services.sh provides them); builds in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-300000}
. bench/lib.sh
cp examples/transforms/phones.lua examples/transforms/phones.py "$out/"

build_table() {
  forget_run bench-transforms
  psql_ <<SQL
DROP TABLE IF EXISTS bench_tx_customers;
CREATE TABLE bench_tx_customers (id bigint PRIMARY KEY, name text NOT NULL, phone text NOT NULL);
INSERT INTO bench_tx_customers
SELECT i, 'Customer ' || i,
       CASE WHEN i % 3 = 0 THEN (ARRAY['0162','0163','0120','0199','0186'])[1 + i % 5]
                                || lpad((i % 10000000)::text, 7, '0')
            ELSE '09' || lpad((i % 100000000)::text, 8, '0') END
FROM generate_series(1, $1) AS i;
VACUUM ANALYZE bench_tx_customers;
CHECKPOINT;
SQL
}

# The step body of each variant; the rules are those of examples/vn-phones.toml.
sql_step='sql = """
UPDATE bench_tx_customers SET phone = CASE substr(phone, 1, 4)
    WHEN '"'"'0162'"'"' THEN '"'"'032'"'"' WHEN '"'"'0163'"'"' THEN '"'"'033'"'"'
    WHEN '"'"'0120'"'"' THEN '"'"'070'"'"' WHEN '"'"'0199'"'"' THEN '"'"'059'"'"'
    WHEN '"'"'0186'"'"' THEN '"'"'056'"'"' END || substr(phone, 5)
WHERE id BETWEEN :start AND :end AND length(phone) = 11
"""'
lua_step='columns = ["phone"]
lua_file = "phones.lua"'
python_step='columns = ["phone"]
command = ["python3", "phones.py"]'

# run LABEL ROWS STEP_BODY: prints one line and remembers the seconds in $secs.
run() {
  local label=$1 n=$2 body=$3
  build_table "$n" >/dev/null
  cat > "$out/plan.toml" <<TOML
name = "bench-transforms"
database = "$url"

[[steps]]
name = "phones"
table = "bench_tx_customers"
key = "id"
where = "length(phone) = 11"
batch_size = 1000
$body
TOML
  local t0 t1 c0 c1
  c0=$(pg_cpu)
  t0=$(date +%s.%N)
  /usr/bin/time -f '%U %S %M' -o "$out/time" "$bin" run "$out/plan.toml" --quiet
  t1=$(date +%s.%N)
  c1=$(pg_cpu)
  secs=$(echo "$t1 - $t0" | bc -l)
  rewritten=$(psql_ -c "SELECT count(*) FROM bench_tx_customers WHERE length(phone) = 10 AND phone NOT LIKE '09%'")
  local user sys rss
  read -r user sys rss < "$out/time"
  printf '%-28s %8.2fs %10.0f rewritten rows/s  %6s rows rewritten  CPU: godwit %.2fs, PostgreSQL %.2fs  peak RSS %s MiB\n' \
    "$label" "$secs" "$(echo "$rewritten / $secs" | bc -l)" "$rewritten" \
    "$(echo "$user + $sys" | bc -l)" "$(echo "$c1 - $c0" | bc -l)" "$((rss / 1024))"
}

echo "rows: $rows (a third rewritten), batch_size 1000, concurrency: godwit's default"
run "SQL step" "$rows" "$sql_step"; sql=$secs
run "Lua transform" "$rows" "$lua_step"; lua=$secs
run "Python program" "$rows" "$python_step"; py=$secs
per_row() { echo "($1 - $sql) * 1000000 / ($rows / 3)" | bc -l; }
printf 'cost per rewritten row over the SQL step: Lua %.1f µs, Python %.1f µs\n' \
  "$(per_row "$lua")" "$(per_row "$py")"
echo "memory: the Lua transform on 10x the rows"
run "Lua transform, ${rows} rows" "$rows" "$lua_step"
run "Lua transform, $((rows * 10)) rows" "$((rows * 10))" "$lua_step"
