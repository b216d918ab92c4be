#!/usr/bin/env bash
# Batches sized by time (issue 13), side by side in one run, on PostgreSQL and MariaDB: the
# phone rewrite of 2M rows (666,666 changed, no index on `phone`) with the filter written only
# in the batch SQL, as most users write it, and with it as `where` too; against one UPDATE and
# against fixed batch sizes. Then the same rewrite on rows that get much slower halfway (a
# costly expression on the second half), where a fixed size is either slow or holds locks long.
#
#   bench/pace.sh [ROUNDS] [ROWS]        (defaults 2 rounds, 2000000 rows)
#
# Every measurement starts from a freshly built table and an empty run record; the contenders
# take turns within each round. Prints each time, the longest batch transaction of each godwit
# run (from godwit_batches), and the medians with their ratio to the single statement.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
rows=${2:-2000000}
. bench/lib.sh
mysql -h 127.0.0.1 -P 3306 -u godwit -pgodwit -e "CREATE DATABASE IF NOT EXISTS godwit_bench"
my_url=${GODWIT_TEST_MYSQL%/*}/godwit_bench
mysql_() { mysql -h 127.0.0.1 -P 3306 -u godwit -pgodwit godwit_bench -N -B "$@"; }
half=$((rows / 2))

forget_my_run() {
  mysql_ -e "DELETE FROM godwit_batches WHERE run = '$1'; DELETE FROM godwit_steps WHERE run = '$1';
             DELETE FROM godwit_runs WHERE run = '$1'" 2>/dev/null || true
}

# build DB: the customers table, a third of it with an old 11-digit number.
build() {
  if [ "$1" = pg ]; then
    forget_run bench-pace
    psql_ >/dev/null <<SQL
DROP TABLE IF EXISTS bench_pace;
CREATE TABLE bench_pace (id bigint PRIMARY KEY, name text NOT NULL, phone text NOT NULL);
INSERT INTO bench_pace
SELECT i, 'Customer ' || i,
       CASE WHEN i % 3 = 0 THEN '0162' || lpad((i % 10000000)::text, 7, '0')
            ELSE '09' || lpad((i % 100000000)::text, 8, '0') END
FROM generate_series(1, $rows) AS i;
VACUUM ANALYZE bench_pace;
CHECKPOINT;
SQL
  else
    forget_my_run bench-pace
    mysql_ <<SQL
DROP TABLE IF EXISTS bench_pace;
CREATE TABLE bench_pace (id BIGINT PRIMARY KEY, name VARCHAR(64) NOT NULL, phone VARCHAR(16) NOT NULL);
INSERT INTO bench_pace
SELECT seq, CONCAT('Customer ', seq),
       CASE WHEN seq % 3 = 0 THEN CONCAT('0162', LPAD(seq % 10000000, 7, '0'))
            ELSE CONCAT('09', LPAD(seq % 100000000, 8, '0')) END
FROM seq_1_to_$rows;
ANALYZE TABLE bench_pace;
SQL
  fi
}

# The rewrite, and on the skewed table the same rewrite made costly on the second half.
set_expr() {
  local db=$1 skew=$2
  if [ "$skew" = skew ]; then
    if [ "$db" = pg ]; then
      echo "'032' || substr(phone, 5) || CASE WHEN id > $half AND length(repeat(md5(phone), 400)) < 0 THEN 'x' ELSE '' END"
    else
      echo "CONCAT('032', SUBSTR(phone, 5), CASE WHEN id > $half AND LENGTH(REPEAT(MD5(phone), 400)) < 0 THEN 'x' ELSE '' END)"
    fi
  elif [ "$db" = pg ]; then
    echo "'032' || substr(phone, 5)"
  else
    echo "CONCAT('032', SUBSTR(phone, 5))"
  fi
}

# plan DB SKEW WHERE SETTINGS: writes the plan; WHERE is "where" to repeat the filter there.
plan() {
  local db=$1 skew=$2 where=$3 settings=$4 u=$url
  [ "$db" = my ] && u=$my_url
  {
    echo "name = \"bench-pace\""
    echo "database = \"$u\""
    printf '[defaults]\n%b\n' "$settings"
    echo '[[steps]]'
    echo 'name = "rewrite"'
    echo 'table = "bench_pace"'
    echo 'key = "id"'
    [ "$where" = where ] && echo 'where = "length(phone) = 11"'
    echo "sql = \"UPDATE bench_pace SET phone = $(set_expr "$db" "$skew") WHERE id BETWEEN :start AND :end AND length(phone) = 11\""
  } > "$out/plan.toml"
}

query() { if [ "$1" = pg ]; then psql_ -c "$2"; else mysql_ -e "$2"; fi; }

now() { date +%s.%N; }
declare -A secs longest

# measure LABEL DB COMMAND...: times the command on a fresh table and checks its result.
measure() {
  local label=$1 db=$2 t0 t1 left
  shift 2
  t0=$(now)
  "$@" >/dev/null
  t1=$(now)
  left=$(query "$db" "SELECT count(*) FROM bench_pace WHERE length(phone) = 11")
  [ "$left" = 0 ] || { echo "$label left $left rows" >&2; exit 1; }
  secs[$label]+="$(echo "$t1 - $t0" | bc -l) "
  local long=""
  if [[ $label == *godwit* ]]; then
    long=$(query "$db" "SELECT max(duration_ms) FROM godwit_batches WHERE run = 'bench-pace'")
    longest[$label]+="$long "
    long=", longest batch ${long} ms"
  fi
  printf '%-44s %6.2fs%s\n' "$label" "$(echo "$t1 - $t0" | bc -l)" "$long"
}

# contenders DB SKEW: one round of every contender on DB.
contenders() {
  local db=$1 skew=$2 tag="$1${2:+ $2}"
  build "$db"
  local sql="UPDATE bench_pace SET phone = $(set_expr "$db" "$skew") WHERE length(phone) = 11"
  measure "$tag: single UPDATE" "$db" query "$db" "$sql"
  for variant in "defaults||" "defaults, where|where|" "fixed 1000|||adaptive = false" \
    "fixed 10000|||batch_size = 10000\nadaptive = false" "fixed 50000|||batch_size = 50000\nadaptive = false"; do
    IFS='|' read -r name where _ settings <<< "$variant"
    build "$db"
    plan "$db" "$skew" "$where" "$settings"
    measure "$tag: godwit $name" "$db" "$bin" run "$out/plan.toml" --quiet
  done
}

for round in $(seq "$rounds"); do
  echo "round $round"
  contenders pg ""
  contenders my ""
  contenders pg skew
done

median() { printf '%s\n' $1 | sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
echo "medians over $rounds rounds ($rows rows, $((rows / 3)) rewritten):"
for tag in "pg" "my" "pg skew"; do
  single=$(median "${secs[$tag: single UPDATE]}")
  for name in "single UPDATE" "godwit defaults" "godwit defaults, where" "godwit fixed 1000" \
    "godwit fixed 10000" "godwit fixed 50000"; do
    label="$tag: $name"
    m=$(median "${secs[$label]}")
    extra=""
    [ -n "${longest[$label]:-}" ] && extra="  longest batch $(printf '%s\n' ${longest[$label]} | sort -g | tail -1) ms"
    printf '  %-44s %6.2fs  %.2fx%s\n' "$label" "$m" "$(echo "$m / $single" | bc -l)" "$extra"
  done
done
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(psql_ -c 'SHOW server_version'), MariaDB $(mysql_ -e 'SELECT VERSION()'), $(uname -r)"
