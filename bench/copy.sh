#!/usr/bin/env bash
# A copy within PostgreSQL, side by side with the one statement a person would write:
# ROWS rows of (bigint, text, text, numeric(12,2), timestamptz) copied into an empty table,
# alternating, ROUNDS times each so that all see the same machine load:
#   - `INSERT INTO dst SELECT * FROM src`, into a table of the same shape;
#   - godwit's copy step into a table of the same shape (one INSERT ... SELECT per batch);
#   - the same, with the database named as the step's `source`, as if it were another one
#     (rows read and loaded undecoded: binary COPY);
#   - godwit's copy step into a table whose `email` is varchar(300) (rows decoded, fitted and
#     written with text COPY).
#
#   bench/copy.sh [ROWS] [ROUNDS] [ON_CONFLICT]    (defaults 1000000, 3, error)
#
# Prints seconds, rows/s, godwit's and PostgreSQL's CPU and the time `godwit verify` took per
# line, then the ratios of the medians.
# Needs PostgreSQL (scripts/test-services.sh provides it); builds in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
rounds=${2:-3}
on_conflict=${3:-error}
. bench/lib.sh

psql_ <<SQL
DROP TABLE IF EXISTS bench_copy_src;
CREATE TABLE bench_copy_src (id bigint PRIMARY KEY, name text NOT NULL, email text,
                             balance numeric(12,2), created timestamptz);
INSERT INTO bench_copy_src
SELECT i, 'Customer ' || i, CASE WHEN i % 10 <> 0 THEN 'customer' || i || '@example.com' END,
       (i % 100000) / 100.0 + 0.01, timestamptz '2020-01-01 00:00:00+00' + i * interval '17 s'
FROM generate_series(1, $rows) AS i;
VACUUM ANALYZE bench_copy_src;
SQL

# fresh_target [EMAIL_TYPE]
fresh_target() {
  psql_ <<SQL
DROP TABLE IF EXISTS bench_copy_dst;
CREATE TABLE bench_copy_dst (LIKE bench_copy_src INCLUDING ALL);
ALTER TABLE bench_copy_dst ALTER email TYPE ${1:-text};
CHECKPOINT;
SQL
  forget_run bench-copy
}

# plan FILE [SOURCE_LINE]: the copy step, reading from the plan's database or from `source`.
plan() {
  cat > "$out/$1" <<TOML
name = "bench-copy"
database = "$url"

[[steps]]
name = "copy"
${2:-}
table = "bench_copy_src"
key = "id"
into = "bench_copy_dst"
on_conflict = "$on_conflict"
batch_size = 5000
TOML
}
plan in-database.toml
# The same database named as the source: read as if it were another one.
plan other-database.toml "source = \"$url\""

now() { date +%s.%N; }
declare -a sql_secs same_secs other_secs decoded_secs

# godwit_line ROUND LABEL PLAN: runs the plan, checks the row count, prints a line, sets $secs.
godwit_line() {
  local t0 t1 user sys rss copied c0 c1
  c0=$(pg_cpu)
  t0=$(now)
  /usr/bin/time -f '%U %S %M' -o "$out/time" "$bin" run "$out/$3" --quiet
  t1=$(now)
  c1=$(pg_cpu)
  secs=$(echo "$t1 - $t0" | bc -l)
  read -r user sys rss < "$out/time"
  copied=$(psql_ -c "SELECT count(*) FROM bench_copy_dst")
  [ "$copied" = "$rows" ] || { echo "godwit copied $copied rows, not $rows" >&2; exit 1; }
  local v0 v1
  v0=$(now)
  "$bin" verify "$out/$3" >/dev/null
  v1=$(now)
  printf 'round %s  %-34s %6.2fs %9.0f rows/s  CPU: godwit %.2fs, PostgreSQL %.2fs  peak RSS %s MiB  verify %.2fs\n' \
    "$1" "$2" "$secs" "$(echo "$rows / $secs" | bc -l)" "$(echo "$user + $sys" | bc -l)" \
    "$(echo "$c1 - $c0" | bc -l)" "$((rss / 1024))" "$(echo "$v1 - $v0" | bc -l)"
}

for round in $(seq "$rounds"); do
  fresh_target >/dev/null
  c0=$(pg_cpu)
  t0=$(now)
  psql_ -c "INSERT INTO bench_copy_dst SELECT * FROM bench_copy_src"
  t1=$(now)
  c1=$(pg_cpu)
  s=$(echo "$t1 - $t0" | bc -l)
  sql_secs+=("$s")
  printf 'round %s  %-34s %6.2fs %9.0f rows/s  CPU: PostgreSQL %.2fs\n' "$round" \
    "one INSERT ... SELECT" "$s" "$(echo "$rows / $s" | bc -l)" "$(echo "$c1 - $c0" | bc -l)"

  fresh_target >/dev/null
  godwit_line "$round" "godwit, same types, same database" in-database.toml
  same_secs+=("$secs")

  fresh_target >/dev/null
  godwit_line "$round" "godwit, same types, as from another" other-database.toml
  other_secs+=("$secs")

  fresh_target "varchar(300)" >/dev/null
  godwit_line "$round" "godwit, a column's type differs" in-database.toml
  decoded_secs+=("$secs")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
sm=$(median "${sql_secs[@]}")
gm=$(median "${same_secs[@]}")
om=$(median "${other_secs[@]}")
dm=$(median "${decoded_secs[@]}")
ratio() { echo "$1 / $sm" | bc -l; }
printf 'medians: one statement %.2fs; godwit: same database %.2fs (%.2fx), as from another %.2fs (%.2fx), a type differs %.2fs (%.2fx)\n' \
  "$sm" "$gm" "$(ratio "$gm")" "$om" "$(ratio "$om")" "$dm" "$(ratio "$dm")"
