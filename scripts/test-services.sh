#!/usr/bin/env bash
# Makes sure PostgreSQL and MariaDB are installed, running, and hold a `godwit_test` database
# and a `godwit` user for the tests, then prints the URLs as shell exports:
#
#   eval "$(scripts/test-services.sh)"
#
# On a fresh Debian or Ubuntu machine this installs the servers from Debian's packages (as
# root, or through sudo). It never removes or changes anything else. GODWIT_TEST_DB names the
# database instead of `godwit_test`: suites of different godwit versions sharing the servers
# then keep their state tables (whose schema version each checks) apart.
set -euo pipefail

log() { echo "test-services: $*" >&2; }
as_root() { if [[ $(id -u) == 0 ]]; then "$@"; else sudo "$@"; fi; }

apt_updated=
apt_install() {
  if [[ -z $apt_updated ]]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 60); do
    port_open "$1" && return 0
    sleep 0.5
  done
  log "nothing answers on 127.0.0.1:$1"
  return 1
}

# --- Python, for the tests of transforms written as external programs -------------------
if ! command -v python3 >/dev/null; then
  log "installing Python"
  apt_install python3
fi

# --- Chromium, for the dashboard's browser test ----------------------------------------
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
  log "installing Chromium and ChromeDriver"
  apt_install chromium chromium-driver
fi

# --- PostgreSQL -------------------------------------------------------------------------
if ! port_open 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt_install postgresql postgresql-client
  fi
  log "starting PostgreSQL"
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || as_root pg_ctlcluster "$version" main start >&2
fi
wait_port 5432
db=${GODWIT_TEST_DB:-godwit_test}
if [[ ! $db =~ ^[a-z_][a-z0-9_]*$ ]]; then
  log "GODWIT_TEST_DB must be a plain lower-case name, not $db"
  exit 1
fi
pg() { as_root runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qAt "$@"; }
if ! pg -c "SELECT 1 FROM pg_roles WHERE rolname = 'godwit'" | grep -q 1; then
  pg -c "CREATE ROLE godwit LOGIN SUPERUSER PASSWORD 'godwit'" >&2
fi
if ! pg -c "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
  pg -c "CREATE DATABASE $db OWNER godwit" >&2
fi
# The replica tests start a streaming replica with pg_basebackup, which connects for
# replication as godwit over 127.0.0.1; `all` in pg_hba.conf does not cover replication. A
# line is added only when no rule names replication at all; nothing else changes.
if ! pg -c "SELECT 1 FROM pg_hba_file_rules WHERE 'replication' = ANY(database)" | grep -q 1; then
  hba=$(pg -c "SHOW hba_file")
  log "allowing replication connections from 127.0.0.1 for godwit in $hba"
  echo "host replication godwit 127.0.0.1/32 scram-sha-256" | as_root tee -a "$hba" >/dev/null
  pg -c "SELECT pg_reload_conf()" >/dev/null
fi

# --- MariaDB ----------------------------------------------------------------------------
if ! port_open 3306; then
  if ! command -v mariadbd >/dev/null && [[ ! -x /usr/sbin/mariadbd ]]; then
    log "installing MariaDB"
    apt_install mariadb-server mariadb-client
  fi
  log "starting MariaDB"
  as_root mkdir -p /run/mysqld
  as_root chown mysql:mysql /run/mysqld 2>/dev/null || true
  as_root start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd >&2
fi
wait_port 3306
mysql_root() {
  if command -v mariadb >/dev/null; then as_root mariadb -uroot "$@"; else as_root mysql -uroot "$@"; fi
}
for _ in $(seq 1 30); do mysql_root -e "SELECT 1" >/dev/null 2>&1 && break; sleep 0.5; done
mysql_root -e "CREATE DATABASE IF NOT EXISTS $db CHARACTER SET utf8mb4;
  CREATE USER IF NOT EXISTS 'godwit'@'127.0.0.1' IDENTIFIED BY 'godwit';
  CREATE USER IF NOT EXISTS 'godwit'@'localhost' IDENTIFIED BY 'godwit';
  GRANT ALL PRIVILEGES ON *.* TO 'godwit'@'127.0.0.1';
  GRANT ALL PRIVILEGES ON *.* TO 'godwit'@'localhost';
  FLUSH PRIVILEGES;" >&2

echo "export GODWIT_TEST_PG=postgres://godwit:godwit@127.0.0.1:5432/$db"
echo "export GODWIT_TEST_MYSQL=mysql://godwit:godwit@127.0.0.1:3306/$db"
