#!/usr/bin/env bash
# A copy from PostgreSQL into MariaDB, side by side with the pipe a person would write:
# ROWS rows of 8 columns (bigint, varchar, varchar, numeric(12,2), int, timestamp(6), jsonb,
# text with tabs and newlines; about 200 bytes a row) copied into an empty MariaDB table,
# alternating, ROUNDS times each so that all see the same machine load:
#   - `psql -c '\copy (SELECT …) to stdout' | mariadb -e "LOAD DATA LOCAL INFILE '/dev/stdin' …"`;
#   - godwit's copy step at its defaults (rows decoded, fitted, LOAD DATA LOCAL INFILE);
#   - the same step run by GODWIT_OLD_BIN when set (another build, e.g. one writing with
#     multi-row INSERT), for a before/after.
#
#   bench/copy-mysql.sh [ROWS] [ROUNDS]    (defaults 1000000, 2)
#
# After each contender the target is compared with the pipe's (row count and a checksum of
# every value). Prints seconds, rows/s, the contender's CPU and peak RSS (the larger of psql
# and mariadb for the pipe), MariaDB's CPU, then the medians and ratios to the pipe.
# Needs PostgreSQL and MariaDB (scripts/test-services.sh provides them); builds in release
# mode unless GODWIT_BIN names the binary.
set -euo pipefail
cd "$(dirname "$0")/.."
rows=${1:-1000000}
rounds=${2:-2}
. bench/lib.sh

# MariaDB: a database of this benchmark's own, reached with the test server's credentials.
my_base=${GODWIT_TEST_MYSQL%/*}
my_user=${my_base#*://}
my_user=${my_user%%@*}
my_pass=${my_user#*:}
my_user=${my_user%%:*}
my_host=${my_base##*@}
my_port=${my_host##*:}
my_host=${my_host%%:*}
export MYSQL_PWD=$my_pass
mariadb_() { mariadb -h "$my_host" -P "$my_port" -u "$my_user" "$@"; }
mariadb_ -e "CREATE DATABASE IF NOT EXISTS godwit_bench_load"
my_url=$my_base/godwit_bench_load
my_() { mariadb_ -N -B godwit_bench_load "$@"; }

psql_ <<SQL
DROP TABLE IF EXISTS bench_load_src;
CREATE TABLE bench_load_src (id bigint PRIMARY KEY, sku varchar(32) NOT NULL,
  name varchar(100) NOT NULL, price numeric(12,2), qty int, created timestamp(6),
  attrs jsonb, notes text);
INSERT INTO bench_load_src
SELECT i, 'SKU-' || lpad(i::text, 10, '0'), 'Product ' || i || ' ' || md5(i::text),
       (i % 1000000) / 100.0 + 0.01, i % 997,
       timestamp '2020-01-01' + i * interval '1.000123 s',
       jsonb_build_object('c', 'colour' || (i % 17), 's', i % 5, 't', jsonb_build_array('x', i % 3)),
       CASE WHEN i % 10 <> 0 THEN E'line one\twith a tab\nline two \\\\ ' || md5((i * 7)::text) END
FROM generate_series(1, $rows) AS i;
VACUUM ANALYZE bench_load_src;
SQL

fresh_target() {
  my_ -e "DROP TABLE IF EXISTS bench_load_dst;
CREATE TABLE bench_load_dst (id BIGINT PRIMARY KEY, sku VARCHAR(32) NOT NULL,
  name VARCHAR(100) NOT NULL, price DECIMAL(12,2), qty INT, created DATETIME(6), attrs JSON,
  notes TEXT) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
DELETE FROM godwit_batches WHERE run = 'bench-load';
DELETE FROM godwit_steps WHERE run = 'bench-load';
DELETE FROM godwit_runs WHERE run = 'bench-load';" 2>/dev/null ||
    my_ -e "DROP TABLE IF EXISTS bench_load_dst;
CREATE TABLE bench_load_dst (id BIGINT PRIMARY KEY, sku VARCHAR(32) NOT NULL,
  name VARCHAR(100) NOT NULL, price DECIMAL(12,2), qty INT, created DATETIME(6), attrs JSON,
  notes TEXT) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;"
}

cat > "$out/plan.toml" <<TOML
name = "bench-load"
database = "$my_url"

[[steps]]
name = "copy"
source = "$url"
table = "bench_load_src"
key = "id"
into = "bench_load_dst"
TOML

columns="id, sku, name, price, qty, created, attrs, notes"
# Every value, in a form equal for equal values (JSON compacted: PostgreSQL prints it spaced).
checksum() {
  my_ -e "SELECT COUNT(*), SUM(CRC32(CONCAT_WS('|', id, sku, name, price, qty, created,
          JSON_COMPACT(attrs), IFNULL(notes, '<null>')))) FROM bench_load_dst"
}
# The CPU seconds MariaDB's server has used.
my_cpu() {
  local pid tick
  tick=$(getconf CLK_TCK)
  pid=$(pgrep -x mariadbd || pgrep -x mysqld)
  cut -d')' -f2- "/proc/$pid/stat" | awk -v t="$tick" '{print ($12 + $13) / t}'
}
now() { date +%s.%N; }
declare -A secs_of
wanted=

# line ROUND LABEL COMMAND...: runs one contender into a fresh target, checks it, prints.
line() {
  local round=$1 label=$2 t0 t1 c0 c1 wall user sys rss sum
  shift 2
  fresh_target
  c0=$(my_cpu)
  t0=$(now)
  /usr/bin/time -f '%U %S %M' -o "$out/time" "$@" >/dev/null
  t1=$(now)
  c1=$(my_cpu)
  wall=$(echo "$t1 - $t0" | bc -l)
  read -r user sys rss < "$out/time"
  sum=$(checksum)
  [ "${sum%%$'\t'*}" = "$rows" ] || { echo "$label copied ${sum%%$'\t'*} rows, not $rows" >&2; exit 1; }
  if [ -z "$wanted" ]; then wanted=$sum; fi
  [ "$sum" = "$wanted" ] || { echo "$label: checksum $sum, the pipe's $wanted" >&2; exit 1; }
  secs_of[$label]+="$wall "
  printf 'round %s  %-28s %6.2fs %9.0f rows/s  CPU: %s %.2fs, MariaDB %.2fs  peak RSS %s MiB\n' \
    "$round" "$label" "$wall" "$(echo "$rows / $wall" | bc -l)" "${label%%,*}" \
    "$(echo "$user + $sys" | bc -l)" "$(echo "$c1 - $c0" | bc -l)" "$((rss / 1024))"
}

pipe() {
  psql "$url" -qAt -c "\\copy (SELECT $columns FROM bench_load_src ORDER BY id) to stdout" |
    mariadb_ --local-infile=1 godwit_bench_load -e \
      "LOAD DATA LOCAL INFILE '/dev/stdin' INTO TABLE bench_load_dst CHARACTER SET utf8mb4 ($columns)"
}
export -f pipe mariadb_
export url columns my_host my_port my_user

labels=("pipe")
for round in $(seq "$rounds"); do
  line "$round" "pipe" bash -c pipe
  if [ -n "${GODWIT_OLD_BIN:-}" ]; then
    line "$round" "godwit, before" "$GODWIT_OLD_BIN" run "$out/plan.toml" --quiet
    [ "$round" = 1 ] && labels+=("godwit, before")
  fi
  line "$round" "godwit" "$bin" run "$out/plan.toml" --quiet
  [ "$round" = 1 ] && labels+=("godwit")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
# shellcheck disable=SC2086
pm=$(median ${secs_of[pipe]})
for label in "${labels[@]}"; do
  # shellcheck disable=SC2086
  m=$(median ${secs_of[$label]})
  printf 'median %-16s %6.2fs  %.2fx the pipe'"'"'s speed\n' "$label" "$m" "$(echo "$pm / $m" | bc -l)"
done
