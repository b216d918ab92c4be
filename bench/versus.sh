#!/usr/bin/env bash
# Two builds of godwit side by side, interleaved in each round so that both see the same
# machine load: the backfill of bench/pg-backfill.sh at the defaults (and the single UPDATE
# it is measured against), and the three copies of bench/copy.sh (same database, as from
# another database, a column's type differs).
#
#   bench/versus.sh BEFORE_BIN AFTER_BIN [ROUNDS] [ROWS]    (defaults 3 rounds, 2000000 rows)
#
# Build the older binary from its own checkout (`git worktree add /tmp/old REV && cargo build
# --release` there). Every run starts from freshly built tables and an empty run record.
# Prints each measurement, then the medians and the ratio of each build to the single
# statement. Needs PostgreSQL (scripts/test-services.sh provides it).
set -euo pipefail
cd "$(dirname "$0")/.."
before=$(realpath "$1")
after=$(realpath "$2")
rounds=${3:-3}
rows=${4:-2000000}
GODWIT_BIN=$after
. bench/lib.sh

build_customers() {
  forget_run bench-versus
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

build_copy_source() {
  psql_ <<SQL
DROP TABLE IF EXISTS bench_copy_src;
CREATE TABLE bench_copy_src (id bigint PRIMARY KEY, name text NOT NULL, email text,
                             balance numeric(12,2), created timestamptz);
INSERT INTO bench_copy_src
SELECT i, 'Customer ' || i, CASE WHEN i % 10 <> 0 THEN 'customer' || i || '@example.com' END,
       (i % 100000) / 100.0 + 0.01, timestamptz '2020-01-01 00:00:00+00' + i * interval '17 s'
FROM generate_series(1, $rows / 2) AS i;
VACUUM ANALYZE bench_copy_src;
SQL
}

# fresh_copy_target [EMAIL_TYPE]
fresh_copy_target() {
  forget_run bench-versus
  psql_ <<SQL
DROP TABLE IF EXISTS bench_copy_dst;
CREATE TABLE bench_copy_dst (LIKE bench_copy_src INCLUDING ALL);
ALTER TABLE bench_copy_dst ALTER email TYPE ${1:-text};
CHECKPOINT;
SQL
}

cat > "$out/backfill.toml" <<TOML
name = "bench-versus"
database = "$url"

[[steps]]
name = "rewrite"
table = "bench_customers"
key = "id"
where = "length(phone) = 11"
sql = "UPDATE bench_customers SET phone = '032' || substr(phone, 5) WHERE id BETWEEN :start AND :end AND length(phone) = 11"
TOML
copy_plan() {
  cat > "$out/$1" <<TOML
name = "bench-versus"
database = "$url"

[[steps]]
name = "copy"
${2:-}
table = "bench_copy_src"
key = "id"
into = "bench_copy_dst"
batch_size = 5000
TOML
}
copy_plan same.toml
copy_plan other.toml "source = \"$url\""

now() { date +%s.%N; }
declare -A secs

# timed LABEL COMMAND...: runs the command, adds its seconds to LABEL's list.
timed() {
  local label=$1 t0 t1
  shift
  t0=$(now)
  "$@" >/dev/null
  t1=$(now)
  secs[$label]+="$(echo "$t1 - $t0" | bc -l) "
  printf '%-34s %6.2fs\n' "$label" "$(echo "$t1 - $t0" | bc -l)"
}

update_sql="UPDATE bench_customers SET phone = '032' || substr(phone, 5) WHERE length(phone) = 11"
build_copy_source >/dev/null
for round in $(seq "$rounds"); do
  echo "round $round"
  build_customers >/dev/null
  timed "single UPDATE" psql_ -c "$update_sql"
  # Alternate which build goes first, so neither always meets a warmer cache.
  order=(before after)
  if (( round % 2 == 0 )); then order=(after before); fi
  for who in "${order[@]}"; do
    bin=${!who}
    build_customers >/dev/null
    timed "backfill, $who" "$bin" run "$out/backfill.toml" --quiet
    left=$(psql_ -c "SELECT count(*) FROM bench_customers WHERE length(phone) = 11")
    [ "$left" = 0 ] || { echo "$who left $left rows" >&2; exit 1; }
  done
  fresh_copy_target >/dev/null
  timed "one INSERT ... SELECT" psql_ -c "INSERT INTO bench_copy_dst SELECT * FROM bench_copy_src"
  for who in "${order[@]}"; do
    bin=${!who}
    fresh_copy_target >/dev/null
    timed "copy same database, $who" "$bin" run "$out/same.toml" --quiet
    fresh_copy_target >/dev/null
    timed "copy as from another, $who" "$bin" run "$out/other.toml" --quiet
    fresh_copy_target "varchar(300)" >/dev/null
    timed "copy type differs, $who" "$bin" run "$out/same.toml" --quiet
  done
done

median() { printf '%s\n' $1 | sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
echo "medians over $rounds rounds ($rows rows backfilled, $((rows / 2)) copied):"
single=$(median "${secs[single UPDATE]}")
insert=$(median "${secs[one INSERT ... SELECT]}")
for label in "single UPDATE" "backfill, before" "backfill, after" "one INSERT ... SELECT" \
  "copy same database, before" "copy same database, after" "copy as from another, before" \
  "copy as from another, after" "copy type differs, before" "copy type differs, after"; do
  m=$(median "${secs[$label]}")
  base=$single
  [[ $label == copy* || $label == one* ]] && base=$insert
  printf '  %-34s %6.2fs  %.2fx the single statement\n' "$label" "$m" "$(echo "$m / $base" | bc -l)"
done
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(psql_ -c 'SHOW server_version'), $(uname -r)"
