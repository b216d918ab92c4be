"""godwit beside what users would otherwise run (issue 16), workload 1: the phone numbers.

Run through `scripts/bench`, which starts the services, builds godwit and prepares the virtual
environment this runs in. For each database and size it builds the deterministic customers
table once, then gives every contender a fresh copy of it, measures the contender (wall time,
peak RSS and CPU of its whole process tree, the database's CPU, the longest transaction, WAL or
redo written, and on PostgreSQL the latency of a light application load beside it), checks that
it left the same data as the single statement, and writes bench/results/DATE.{json,md,svg}.
"""
import argparse
import collections
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import psycopg
import pymysql

import keyset_loop
import phones

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")
# BENCH_DB names another database, for two runs side by side on the same servers.
DB_NAME = os.environ.get("BENCH_DB", "godwit_cmp")
REDIS_PORT = 6395

# The tuning found best for godwit on this workload (a sweep of batch sizes, batch times and
# concurrency, `--contenders sweep`; see the results notes); "godwit-best" runs with it.
BEST = {"where": "length(phone) = 11", "args": [], "defaults": {"target_batch_time": "500ms"}}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- processes -------------------------------------------------------------------------------

def proc_table():
    """pid -> (ppid, comm, rss bytes, own CPU ticks, children's CPU ticks)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), comm, int(fields[21]) * PAGE,
                             int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    return table


def descendants(table, roots):
    children = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen, todo = set(), [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, []))
    return seen


class TreeSampler(threading.Thread):
    """Peak RSS of a process tree (summed over its processes) and the CPU its processes used.

    `roots` is called at each sample, so that processes started later (a restarted worker)
    are followed too. CPU is each process's own user+system time as last seen, summed.
    """

    def __init__(self, roots, interval=0.1):
        super().__init__(daemon=True)
        self.roots, self.interval = roots, interval
        self.peak_rss, self.cpu, self.stop_flag = 0, {}, threading.Event()

    def sample(self):
        table = proc_table()
        tree = descendants(table, self.roots())
        self.peak_rss = max(self.peak_rss, sum(table[p][2] for p in tree))
        for pid in tree:
            self.cpu[pid] = table[pid][3]

    def run(self):
        while not self.stop_flag.is_set():
            self.sample()
            self.stop_flag.wait(self.interval)

    def stop(self):
        self.sample()
        self.stop_flag.set()
        self.join()
        return self.peak_rss, sum(self.cpu.values()) / TICK


def server_cpu(comm):
    """CPU seconds used so far by a database server's processes on this machine (live ones, and
    the ended children their parents collected)."""
    table = proc_table()
    pids = [p for p, v in table.items() if v[1] == comm or (comm == "postgres" and v[1].startswith("postgres"))]
    return sum(table[p][3] for p in pids) / TICK + sum(
        table[p][4] for p in pids if table[p][0] not in pids) / TICK


def kill_group(proc, sig=signal.SIGKILL):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def busy_builds():
    """Compilers running on the machine (colleagues' builds share the cores)."""
    return sum(1 for v in proc_table().values() if v[1] in ("rustc", "cc1", "cc1plus", "ld", "cargo"))


# --- databases -------------------------------------------------------------------------------

class Postgres:
    dialect = "postgres"
    name = "PostgreSQL"

    def __init__(self, admin_url):
        self.admin_url = admin_url
        parts = urllib.parse.urlsplit(admin_url)
        self.url = urllib.parse.urlunsplit(parts._replace(path="/" + DB_NAME))
        with psycopg.connect(admin_url, autocommit=True) as c:
            if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone():
                c.execute(f'CREATE DATABASE "{DB_NAME}"')
        self.godwit_url = self.url
        # Commands get the URL without its password (argv is visible to every user), and the
        # password in their environment.
        self.password = urllib.parse.unquote(parts.password or "")
        self.cli_url = urllib.parse.urlunsplit(parts._replace(
            path="/" + DB_NAME, netloc=parts.netloc.split("@")[-1] if not parts.username else
            f"{parts.username}@{parts.netloc.split('@')[-1]}"))

    def connect(self):
        return psycopg.connect(self.url, autocommit=True)

    def script(self, sql):
        with self.connect() as c:
            for stmt in [s for s in sql.split(";\n") if s.strip()]:
                c.execute(stmt)

    def build_source(self, rows):
        table = f"customers_src_{rows}"
        # One transaction: a build that fails leaves no table behind.
        with psycopg.connect(self.url) as c:
            if c.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]:
                return
            log(f"  building {table}")
            c.execute(f"CREATE TABLE {table} (id bigint, name text, phone text, visits int)")
            c.execute(phones.generate_sql("postgres", table, rows))

    def fresh_copy(self, rows):
        with self.connect() as c:
            c.execute("DROP TABLE IF EXISTS customers")
            for (t,) in c.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                  "AND tablename LIKE 'godwit\\_%'").fetchall():
                c.execute(f'DROP TABLE IF EXISTS "{t}" CASCADE')
            c.execute("CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, "
                      "phone text NOT NULL, visits int NOT NULL DEFAULT 0)")
            c.execute(f"INSERT INTO customers SELECT * FROM customers_src_{rows}")
            c.execute("CREATE INDEX customers_phone ON customers (phone)")
            c.execute("VACUUM ANALYZE customers")
            c.execute("CHECKPOINT")
            c.execute(keyset_loop.procedure("postgres"))

    def rows(self, sql):
        with psycopg.connect(self.url) as c:
            with c.cursor(name="rows") as cur:
                cur.itersize = 50000
                cur.execute(sql)
                yield from cur

    def scalar(self, sql, args=()):
        with self.connect() as c:
            return c.execute(sql, args).fetchone()[0]

    def wal(self):
        return self.scalar("SELECT pg_current_wal_lsn()::text")

    def wal_bytes(self, start, end):
        return int(self.scalar("SELECT pg_wal_lsn_diff(%s::pg_lsn, %s::pg_lsn)", (end, start)))

    def updated(self):
        return self.scalar("SELECT coalesce(sum(n_tup_upd), 0)::bigint FROM pg_stat_user_tables WHERE relname = 'customers'")

    def longest_xact(self):
        return self.scalar(
            "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0)::float8 "
            "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend' AND xact_start IS NOT NULL "
            "AND coalesce(application_name, '') <> 'bench-load'")

    def terminate_contender(self):
        with self.connect() as c:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND application_name = 'bench-contender'")

    def single_argv(self):
        return ["psql", self.cli_url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", phones.single_statement("postgres")]

    def keyset_argv(self):
        return ["psql", self.cli_url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", "CALL bench_keyset_loop(1000)"]

    def env(self):
        return {"PGPASSWORD": self.password}

    def cpu(self):
        return server_cpu("postgres")

    def info(self):
        with self.connect() as c:
            settings = {k: c.execute(f"SHOW {k}").fetchone()[0] for k in (
                "shared_buffers", "synchronous_commit", "max_wal_size", "wal_level", "fsync",
                "work_mem", "checkpoint_timeout", "max_connections", "jit")}
            return {"version": c.execute("SHOW server_version").fetchone()[0], "settings": settings}


class MariaDB(Postgres):
    dialect = "mariadb"
    name = "MariaDB"

    def __init__(self, admin_url):
        parts = urllib.parse.urlsplit(admin_url)
        self.conn_args = dict(host=parts.hostname, port=parts.port or 3306, user=urllib.parse.unquote(parts.username),
                              password=urllib.parse.unquote(parts.password or ""), autocommit=True)
        c = pymysql.connect(**self.conn_args)
        c.cursor().execute(f"CREATE DATABASE IF NOT EXISTS `{DB_NAME}` CHARACTER SET utf8mb4")
        c.close()
        self.godwit_url = urllib.parse.urlunsplit(parts._replace(path="/" + DB_NAME))

    def connect(self, **extra):
        return pymysql.connect(database=DB_NAME, **self.conn_args, **extra)

    def execute(self, *stmts):
        c = self.connect()
        try:
            cur = c.cursor()
            for s in stmts:
                cur.execute(s)
            return cur.fetchall()
        finally:
            c.close()

    def build_source(self, rows):
        table = f"customers_src_{rows}"
        if self.execute(f"SHOW TABLES LIKE '{table}'"):
            return
        log(f"  building {table}")
        # Built under another name and renamed: a build that fails leaves no table behind.
        self.execute(f"DROP TABLE IF EXISTS {table}_tmp")
        self.execute(f"CREATE TABLE {table}_tmp (id bigint PRIMARY KEY, name varchar(40) NOT NULL, "
                     "phone varchar(16) NOT NULL, visits int NOT NULL DEFAULT 0, KEY customers_phone (phone))",
                     phones.generate_sql("mariadb", f"{table}_tmp", rows), f"RENAME TABLE {table}_tmp TO {table}")

    def fresh_copy(self, rows):
        stmts = ["DROP TABLE IF EXISTS customers"]
        for (t,) in self.execute("SHOW TABLES LIKE 'godwit\\_%'"):
            stmts.append(f"DROP TABLE IF EXISTS `{t}`")
        self.execute(*stmts, f"CREATE TABLE customers LIKE customers_src_{rows}",
                     f"INSERT INTO customers SELECT * FROM customers_src_{rows}",
                     "ANALYZE TABLE customers", "DROP PROCEDURE IF EXISTS bench_keyset_loop",
                     keyset_loop.procedure("mariadb"))

    def rows(self, sql):
        c = self.connect(cursorclass=pymysql.cursors.SSCursor)
        try:
            cur = c.cursor()
            cur.execute(sql)
            yield from cur
        finally:
            c.close()

    def scalar(self, sql, args=()):
        c = self.connect()
        try:
            cur = c.cursor()
            cur.execute(sql, args)
            return cur.fetchone()[0]
        finally:
            c.close()

    def wal(self):
        return int(self.scalar("SELECT variable_value FROM information_schema.global_status "
                               "WHERE variable_name = 'INNODB_OS_LOG_WRITTEN'"))

    def wal_bytes(self, start, end):
        return end - start

    def updated(self):
        return None

    def longest_xact(self):
        # trx_started has whole seconds only: each transaction is timed from the first to the
        # last sample that saw it instead (to the sampling interval). A read-only transaction's
        # trx_id is reused by its session's next one, so a transaction is also new when it was
        # missing from the previous sample or its started second changed.
        now = time.time()
        if getattr(self, "_last", 0) < now - 1:
            self._seen, self._open, self._longest = {}, set(), 0.0
        self._last = now
        current = set()
        for trx, thread, started in self.execute(
                "SELECT t.trx_id, t.trx_mysql_thread_id, t.trx_started FROM information_schema.innodb_trx t "
                "JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id "
                f"WHERE p.db = '{DB_NAME}' AND p.id <> connection_id()"):
            key = (trx, thread, started)
            current.add(key)
            if key not in self._open:
                self._seen[key] = now
            self._longest = max(self._longest, now - self._seen[key])
        self._open = current
        return self._longest

    def mysql_argv(self, sql):
        a = self.conn_args
        return ["mariadb", "-h", a["host"], "-P", str(a["port"]), "-u", a["user"], DB_NAME, "-e", sql]

    def single_argv(self):
        return self.mysql_argv(phones.single_statement("mariadb"))

    def keyset_argv(self):
        return self.mysql_argv("CALL bench_keyset_loop(1000)")

    def env(self):
        return {"MYSQL_PWD": self.conn_args["password"]}

    def cpu(self):
        return server_cpu("mariadbd")

    def info(self):
        names = ("innodb_buffer_pool_size", "innodb_flush_log_at_trx_commit", "innodb_log_file_size",
                 "sync_binlog", "log_bin", "innodb_doublewrite", "transaction_isolation")
        got = dict(self.execute("SHOW GLOBAL VARIABLES WHERE variable_name IN (" +
                                ", ".join(f"'{n}'" for n in names) + ")"))
        return {"version": self.scalar("SELECT version()"), "settings": got}


class SQLite(Postgres):
    dialect = "sqlite"
    name = "SQLite"

    def __init__(self, work):
        self.dir = work / "sqlite"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "customers.db"
        self.godwit_url = f"sqlite://{self.path}"

    def connect(self):
        return sqlite3.connect(self.path, isolation_level=None)

    def build_source(self, rows):
        src = self.dir / f"source-{rows}.db"
        if src.exists():
            return
        log(f"  building {src.name}")
        tmp = src.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        c = sqlite3.connect(tmp, isolation_level=None)
        c.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, phone TEXT NOT NULL, "
                  "visits INTEGER NOT NULL DEFAULT 0)")
        c.execute("BEGIN")
        c.execute(phones.generate_sql("sqlite", "customers", rows))
        c.execute("COMMIT")
        c.execute("CREATE INDEX customers_phone ON customers (phone)")
        c.execute("ANALYZE")
        c.close()
        tmp.rename(src)

    def fresh_copy(self, rows):
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(self.dir / f"source-{rows}.db", self.path)

    def rows(self, sql):
        c = self.connect()
        try:
            yield from c.execute(sql)
        finally:
            c.close()

    def scalar(self, sql, args=()):
        c = self.connect()
        try:
            return c.execute(sql, args).fetchone()[0]
        finally:
            c.close()

    def wal(self):
        return None

    def wal_bytes(self, start, end):
        return None

    def updated(self):
        return None

    def longest_xact(self):
        return None

    def single_argv(self):
        return ["sqlite3", str(self.path), phones.single_statement("sqlite")]

    def keyset_argv(self):
        return [sys.executable, str(HERE / "keyset_loop_sqlite.py"), str(self.path), "1000"]

    def env(self):
        return {}

    def cpu(self):
        return 0.0

    def info(self):
        return {"version": sqlite3.sqlite_version, "settings": {"journal_mode": "delete (as created)"}}


def checksum(db):
    """md5 of every `id:phone` line in key order; the same data gives the same sum on every
    database."""
    h = hashlib.md5()
    n = 0
    for record_id, phone in db.rows("SELECT id, phone FROM customers ORDER BY id"):
        h.update(f"{record_id}:{phone}\n".encode())
        n += 1
    return f"{h.hexdigest()}/{n}"


def remaining(db):
    return db.scalar(f"SELECT count(*) FROM customers WHERE {phones.FILTER}")


# --- the application load beside a contender (PostgreSQL) ------------------------------------

class Load(threading.Thread):
    """pgbench at a fixed rate (single-row reads and writes of `customers`) in 5-second
    segments until stopped, so that its per-transaction log ends soon after the contender;
    only transactions started inside the contender's window are counted."""

    def __init__(self, db, rows, rate, work):
        super().__init__(daemon=True)
        self.db, self.rows, self.rate, self.dir = db, rows, rate, work / "load"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.stop_flag = threading.Event()
        self.stderr = []

    def run(self):
        k = 0
        env = dict(os.environ, PGAPPNAME="bench-load", **self.db.env())
        while not self.stop_flag.is_set():
            k += 1
            p = subprocess.run(
                ["pgbench", self.db.cli_url, "-n", "-R", str(self.rate), "-T", "5", "-c", "2", "-j", "1",
                 "--max-tries=1", "--failures-detailed", "-D", f"rows={self.rows}",
                 "-f", f"{HERE / 'load-read.sql'}@1", "-f", f"{HERE / 'load-write.sql'}@1",
                 "-l", f"--log-prefix={self.dir / f'seg{k}'}"],
                env=env, capture_output=True, text=True)
            self.stderr += [ln for ln in p.stderr.splitlines() if "abort" in ln or "ERROR" in ln]

    def stop(self):
        self.stop_flag.set()
        self.join()

    def figures(self, t0, t1):
        lat, errors = [], 0
        for f in self.dir.iterdir():
            for line in f.read_text().split("\n"):
                parts = line.split()
                if len(parts) < 6:
                    continue
                # The log's time stamp is the transaction's end; its start (as scheduled by the
                # rate) is that less its latency and its schedule lag.
                end = int(parts[4]) + int(parts[5]) / 1e6
                if not parts[2].isdigit():
                    errors += t0 <= end <= t1
                    continue
                lag = int(parts[6]) if len(parts) > 6 and parts[6].isdigit() else 0
                if not t0 <= end - (int(parts[2]) + lag) / 1e6 <= t1:
                    continue
                lat.append((int(parts[2]) + lag) / 1000)
        lat.sort()
        pick = lambda q: round(lat[min(len(lat) - 1, int(len(lat) * q))], 1) if lat else None  # noqa: E731
        return {"n": len(lat), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(lat[-1], 1) if lat else None,
                "errors": errors + len(self.stderr), "messages": self.stderr[:5]}


class XactSampler(threading.Thread):
    def __init__(self, db, interval=0.05):
        super().__init__(daemon=True)
        self.db, self.interval, self.longest = db, interval, 0.0
        self.stop_flag = threading.Event()

    def run(self):
        if self.db.longest_xact() is None:
            self.longest = None
            return
        while not self.stop_flag.is_set():
            try:
                self.longest = max(self.longest, self.db.longest_xact())
            except Exception:  # a sample lost while the server is busy is not a result
                pass
            self.stop_flag.wait(self.interval)

    def stop(self):
        self.stop_flag.set()
        self.join()
        return None if self.longest is None else round(self.longest, 3)


# --- contenders ------------------------------------------------------------------------------

class Command:
    """A contender that is one command (with its child processes)."""

    def __init__(self, argv, env=None, on_kill=None, cwd=None):
        self.argv, self.env, self.on_kill, self.cwd = argv, env or {}, on_kill, cwd
        self.proc = None

    def setup(self):
        pass

    def start(self):
        self.proc = subprocess.Popen(self.argv, env=dict(os.environ, **self.env), cwd=self.cwd,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def roots(self):
        return [self.proc.pid] if self.proc else []

    def wait(self, timeout=None):
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop_all()
            self.proc.communicate()
            return "timeout"
        if self.proc.returncode != 0:
            return f"exit {self.proc.returncode}: {err.decode(errors='replace').strip()[-300:]}"
        return None

    def kill9(self):
        kill_group(self.proc)
        if self.on_kill:
            self.on_kill()

    def restart(self):
        self.proc.wait()
        self.start()

    def stop_all(self):
        """Stops everything at once (the time cap)."""
        kill_group(self.proc)
        if self.on_kill:
            self.on_kill()

    def teardown(self):
        pass


class CeleryFleet(Command):
    """Redis, a Celery worker (one prefork process per core) and the submitter."""

    def __init__(self, db, work, shape, per_task):
        super().__init__([sys.executable, str(HERE / "celery_fleet.py"), shape, str(per_task)], cwd=HERE)
        self.db, self.work = db, work
        self.ready = work / "celery-ready"
        self.redis_url = f"redis://127.0.0.1:{REDIS_PORT}/0"
        self.env = {"BENCH_PG_URL": db.url, "BENCH_REDIS_URL": self.redis_url, "BENCH_READY_FILE": str(self.ready),
                    "PYTHONPATH": str(HERE)}
        self.redis = self.worker = None

    def start_worker(self):
        self.ready.unlink(missing_ok=True)
        celery = str(Path(sys.executable).parent / "celery")
        self.worker = subprocess.Popen(
            [celery, "-A", "celery_fleet", "worker", "--pool", "prefork", "--concurrency", str(os.cpu_count()),
             "--loglevel", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=HERE, env=dict(os.environ, **self.env), stdout=subprocess.DEVNULL,
            stderr=open(self.work / "celery-worker.log", "a"), start_new_session=True)
        for _ in range(600):
            if self.ready.exists():
                return
            time.sleep(0.05)
        raise RuntimeError("the Celery worker did not start (bench/out/compare/celery-worker.log)")

    def setup(self):
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, start_new_session=True)
        time.sleep(0.3)
        self.start_worker()

    def roots(self):
        return [p.pid for p in (self.redis, self.worker, self.proc) if p]

    def kill9(self):
        # The fleet's workers die (as a node lost); Redis and the waiting submitter stay.
        kill_group(self.worker)
        self.worker.wait()

    def restart(self):
        self.start_worker()

    def stop_all(self):
        kill_group(self.worker)
        kill_group(self.proc)

    def teardown(self):
        for p in (self.worker, self.redis):
            kill_group(p, signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                kill_group(p)
                p.wait()


def godwit_plan(db, work, label, extra):
    """Writes the plan of a godwit contender; `extra` holds its where/defaults/top keys."""
    sql = phones.batch_statement(db.dialect, "id BETWEEN :start AND :end")
    defaults = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.get("defaults", {}).items())
    top = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.get("top", {}).items())
    where = f'where = "{extra["where"]}"\n' if extra.get("where") else ""
    path = work / f"plan-{db.dialect}-{label}.toml"
    if extra.get("lua_file"):
        body = f'columns = ["phone"]\nlua_file = "{extra["lua_file"]}"\n'
    else:
        body = f'sql = """\n{sql}\n"""\n'
    path.write_text(f'''name = "cmp-{label}"
database = "{db.godwit_url}"
{top}{"[defaults]" if defaults else ""}
{defaults}
[[steps]]
name = "rewrite-phones"
table = "customers"
key = "id"
{where}{body}''')
    return path


# label -> (description, plan extras, databases)
GODWIT = {
    "godwit": ("godwit at its defaults, the filter only in the batch SQL", {}, ("postgres", "mariadb", "sqlite")),
    "godwit-where": ("godwit at its defaults, the filter also in `where`", {"where": "length(phone) = 11"},
                     ("postgres", "mariadb", "sqlite")),
    "godwit-best": ("godwit at its best settings found: " + ", ".join(
        [f"where = {json.dumps(BEST['where'])}"] + [f"{k} = {json.dumps(v)}" for k, v in BEST["defaults"].items()]
        + ([" ".join(BEST["args"])] if BEST["args"] else [])), BEST, ("postgres",)),
    "godwit-lua": ("godwit at its defaults with the rewrite as a Lua transform (examples/transforms/phones.lua), "
                   "the filter in `where`",
                   {"where": "length(phone) = 11", "lua_file": str(ROOT / "examples" / "transforms" / "phones.lua")},
                   ("postgres", "mariadb", "sqlite")),
    "godwit-guard": ('godwit with the latency guard, `max_latency_increase = "2x"`, filter in the SQL',
                     {"top": {"max_latency_increase": "2x"}}, ("postgres",)),
}
WHERE = {"where": "length(phone) = 11"}
SWEEP = {
    "godwit-c2": dict(WHERE, args=["--concurrency", "2"]),
    "godwit-c8": dict(WHERE, args=["--concurrency", "8"]),
    "godwit-b10k": dict(WHERE, defaults={"batch_size": 10000, "adaptive": False}),
    "godwit-b5k": dict(WHERE, defaults={"batch_size": 5000, "adaptive": False}),
    "godwit-t50": dict(WHERE, defaults={"target_batch_time": "50ms"}),
    "godwit-t250": dict(WHERE, defaults={"target_batch_time": "250ms"}),
    "godwit-t500": dict(WHERE, defaults={"target_batch_time": "500ms"}),
    "godwit-c8-t250": dict(WHERE, args=["--concurrency", "8"], defaults={"target_batch_time": "250ms"}),
    "godwit-c2-t250": dict(WHERE, args=["--concurrency", "2"], defaults={"target_batch_time": "250ms"}),
    "godwit-sql-c8": {"args": ["--concurrency", "8"]},
    "godwit-t50-c8": dict(WHERE, args=["--concurrency", "8"], defaults={"target_batch_time": "50ms"}),
    "godwit-t50-c2": dict(WHERE, args=["--concurrency", "2"], defaults={"target_batch_time": "50ms"}),
    "godwit-t20": dict(WHERE, defaults={"target_batch_time": "20ms"}),
}
OTHERS = {
    "single": "one monolithic UPDATE (one transaction)",
    "keyset-loop": "server-side keyset loop, COMMIT every 1,000 keys (stored procedure; Python on SQLite)",
    "celery-record": "Celery + Redis, record by record (ids up front, 1,000 per task)",
    "celery-set-1k": "Celery + Redis, one set-based UPDATE per task of 1,000 ids",
    "celery-set-10k": "Celery + Redis, one set-based UPDATE per task of 10,000 ids",
}
ALL_DBS = ("postgres", "mariadb", "sqlite")


def describe(label):
    if label in GODWIT:
        return GODWIT[label][0]
    if label in SWEEP:
        return "godwit sweep: " + json.dumps(SWEEP[label])
    return OTHERS[label]


def make_job(db, work, label, bin_path):
    if label in GODWIT or label in SWEEP:
        extra = GODWIT[label][1] if label in GODWIT else SWEEP[label]
        plan = godwit_plan(db, work, label, extra)
        return Command([bin_path, "run", str(plan), "--quiet"] + extra.get("args", []), env={"RUST_LOG": "warn"})
    if label == "single":
        return Command(db.single_argv(), env=dict(db.env(), PGAPPNAME="bench-contender"),
                       on_kill=getattr(db, "terminate_contender", None))
    if label == "keyset-loop":
        return Command(db.keyset_argv(), env=dict(db.env(), PGAPPNAME="bench-contender", PYTHONPATH=str(HERE)),
                       on_kill=getattr(db, "terminate_contender", None))
    if label.startswith("celery-"):
        shape = "record" if label == "celery-record" else "set"
        return CeleryFleet(db, work, shape, 10000 if label.endswith("10k") else 1000)
    raise ValueError(label)


def applicable(db, label):
    if label in GODWIT:
        return db.dialect in GODWIT[label][2]
    if label.startswith("celery-") or label in SWEEP:
        return db.dialect == "postgres"
    return True


# --- measuring -------------------------------------------------------------------------------

def measure(db, work, label, rows, bin_path, load_rate, timeout):
    db.fresh_copy(rows)
    job = make_job(db, work, label, bin_path)
    job.setup()
    wal0, cpu0, la = db.wal(), db.cpu(), loadavg()
    load = Load(db, rows, load_rate, work) if load_rate and db.dialect == "postgres" else None
    if load:
        load.start()
        time.sleep(1)
    tree = TreeSampler(job.roots)
    xact = XactSampler(db)
    t0 = time.time()
    job.start()
    tree.start()
    xact.start()
    error = job.wait(timeout)
    t1 = time.time()
    peak, cpu = tree.stop()
    longest = xact.stop()
    if load:
        load.stop()
    job.teardown()
    wal1, cpu1 = db.wal(), db.cpu()
    result = {
        "database": db.dialect, "rows": rows, "rewritten": phones.to_rewrite(rows), "contender": label,
        "what": describe(label), "seconds": round(t1 - t0, 3), "peak_rss_mib": round(peak / 2**20, 1),
        "cpu_s": round(cpu, 2), "db_cpu_s": round(cpu1 - cpu0, 2) if db.dialect != "sqlite" else None,
        "longest_xact_s": longest, "wal_bytes": db.wal_bytes(wal0, wal1) if wal0 is not None else None,
        "load": load.figures(t0, t1) if load else None, "loadavg": la, "error": error,
    }
    result["rows_per_s"] = round(result["rewritten"] / result["seconds"])
    if error == "timeout":
        # Stopped at the time cap: its rate so far, and the time it would have taken at it.
        done = result["rewritten"] - remaining(db)
        result.update(error=None, capped=True, done=done, rows_per_s=round(done / result["seconds"]),
                      projected_s=round(result["seconds"] * result["rewritten"] / max(done, 1), 1))
    elif error is None:
        result["left"] = remaining(db)
        result["checksum"] = checksum(db)
    return result


def kill_test(db, work, label, rows, bin_path, at_seconds):
    """Starts the contender on a fresh copy, kills it with SIGKILL once half the rows are
    changed (the single statement, whose progress cannot be seen, after `at_seconds`), starts
    it again and lets it finish: how long the rest took, and how many row updates were made in
    all beyond the rows to change (work rolled back or done twice)."""
    db.fresh_copy(rows)
    job = make_job(db, work, label, bin_path)
    job.setup()
    half = phones.to_rewrite(rows) // 2
    t0 = time.time()
    job.start()
    if label == "single":
        time.sleep(at_seconds)
    else:
        while remaining(db) > half and time.time() - t0 < 4 * at_seconds + 30:
            time.sleep(0.1)
    job.kill9()
    t_kill = time.time()
    time.sleep(0.5)
    left_at_kill = remaining(db)
    t_restart = time.time()
    job.restart()
    error = job.wait(1800)
    t1 = time.time()
    job.teardown()
    time.sleep(1.5)
    updated = db.updated()
    return {"database": db.dialect, "rows": rows, "contender": label, "killed_after_s": round(t_kill - t0, 2),
            "done_at_kill": phones.to_rewrite(rows) - left_at_kill, "ended_before_kill": left_at_kill == 0,
            "finish_after_restart_s": round(t1 - t_restart, 2), "total_s": round(t1 - t0 - (t_restart - t_kill), 2),
            "updated_twice_or_rolled_back": (updated - phones.to_rewrite(rows)) if updated is not None else None,
            "left": remaining(db), "checksum": checksum(db), "error": error}


def offset_series(db, work, sizes, cap):
    out = []
    for n in sizes:
        db.build_source(n)
        db.fresh_copy(n)
        subprocess.run(db.single_argv(), check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, **db.env()))
        reference = checksum(db)
        db.fresh_copy(n)
        job = Command([sys.executable, str(HERE / "offset_script.py"), "1000"],
                      env={"PYTHONPATH": str(HERE), "BENCH_PG_URL": db.url})
        tree = TreeSampler(job.roots)
        t0 = time.time()
        job.start()
        tree.start()
        error = job.wait(cap)
        t1 = time.time()
        peak, cpu = tree.stop()
        finished = error is None
        r = {"rows": n, "seconds": round(t1 - t0, 2), "finished": finished, "error": error,
             "peak_rss_mib": round(peak / 2**20, 1), "cpu_s": round(cpu, 2),
             "same_data": checksum(db) == reference if finished else None}
        if error == "timeout":
            # Its pages get slower as it goes, so its rate so far gives a lower bound.
            r["done"] = phones.to_rewrite(n) - remaining(db)
            r["projected_min_s"] = round(r["seconds"] * phones.to_rewrite(n) / max(r["done"], 1))
        log(f"  OFFSET script, {n:,} rows: {r['seconds']} s{'' if finished else ' (stopped at the cap)'}")
        out.append(r)
        if not finished:
            break
    return out


# --- machine ---------------------------------------------------------------------------------

def machine():
    mem = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024
    model = re.search(r"model name\s+:\s+(.*)", Path("/proc/cpuinfo").read_text())

    def version(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True).stdout.strip().splitlines()[0]
        except (OSError, IndexError):
            return None

    import celery
    return {"cores": os.cpu_count(), "memory_gib": round(mem / 2**30, 1), "cpu": model.group(1) if model else None,
            "kernel": platform.release(), "python": platform.python_version(), "celery": celery.__version__,
            "redis": (version(["redis-server", "--version"]) or "").split(" sha=")[0], "pgbench": version(["pgbench", "--version"]),
            "godwit_commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True).stdout.strip()}


# --- targets ---------------------------------------------------------------------------------

def targets(results, offsets, idle):
    """Issue 16's targets, each met or missed with its figure (nothing is asserted)."""
    out = []
    pg = [r for r in results if r["database"] == "postgres" and not r.get("error")]
    if not pg:
        return out
    # The size with the most contenders is the main one; a big size runs only a few.
    size = collections.Counter(r["rows"] for r in pg).most_common(1)[0][0]
    at = {r["contender"]: r for r in pg if r["rows"] == size}

    def add(name, figure, met):
        out.append({"target": name, "figure": figure, "met": bool(met)})

    for db in ("postgres", "mariadb", "sqlite"):
        for n in sorted({r["rows"] for r in results if r["database"] == db}):
            here = {r["contender"]: r for r in results if (r["database"], r["rows"]) == (db, n) and not r.get("error")}
            single = here.get("single")
            for label in ("godwit", "godwit-where"):
                if single and label in here:
                    x = here[label]["seconds"] / single["seconds"]
                    add(f"{label} at most 0.6x the single statement's time ({db}, {n:,} rows)", f"{x:.2f}x", x <= 0.6)
    g = at.get("godwit")
    if g and "celery-record" in at:
        c = at["celery-record"]
        x = c.get("projected_s", c["seconds"]) / g["seconds"]
        add("godwit at least 20x faster than Celery record by record",
            f"{x:.1f}x" + (f" (Celery stopped at {c['seconds']:.0f} s, {c['projected_s']:.0f} s projected from its rate)"
                           if c.get("capped") else ""), x >= 20)
    if g and "celery-set-1k" in at:
        c = at["celery-set-1k"]
        x = c["seconds"] / g["seconds"]
        m = g["peak_rss_mib"] / c["peak_rss_mib"]
        add("godwit at least 1.3x faster than the best Celery (1k ids per task) with at most a third of its memory",
            f"{x:.2f}x faster, {m:.2f} of its memory ({g['peak_rss_mib']} against {c['peak_rss_mib']} MiB)",
            x >= 1.3 and m <= 1 / 3)
    if g and offsets:
        done = [o for o in offsets if o["finished"]]
        there = next((o for o in offsets if o["rows"] == size), None)
        if there and there["finished"]:
            x = there["seconds"] / g["seconds"]
            add(f"godwit at least 200x faster than the OFFSET script at {size:,} rows",
                f"{x:.0f}x ({there['seconds']:,.0f} s)", x >= 200)
        elif there and there.get("projected_min_s"):
            x = there["projected_min_s"] / g["seconds"]
            add(f"godwit at least 200x faster than the OFFSET script at {size:,} rows",
                f"at least {x:.0f}x (the script stopped at {there['seconds']:.0f} s with {there['done']:,} of "
                f"{size // 3:,} rows done; at least {there['projected_min_s']:,} s at that rate, which only falls)",
                x >= 200)
        elif done:
            big = max(done, key=lambda o: o["rows"])
            projected = big["seconds"] * (size / big["rows"]) ** 2
            x = projected / g["seconds"]
            add(f"godwit at least 200x faster than the OFFSET script at {size:,} rows",
                f"{x:.0f}x (the script's {projected:,.0f} s projected as N² from {big['seconds']} s at {big['rows']:,} rows)",
                x >= 200)
    gd = at.get("godwit-guard")
    if gd and gd.get("load") and idle and idle.get("p99_ms"):
        x = gd["load"]["p99_ms"] / idle["p99_ms"]
        add("load p99 at most 2x idle beside godwit with max_latency_increase = \"2x\"",
            f"{x:.1f}x ({gd['load']['p99_ms']} ms against {idle['p99_ms']} ms idle) at {gd['rows_per_s']:,} rows/s", x <= 2)
    gods = [r for r in results if r["contender"] == "godwit" and not r.get("error")]
    if gods:
        worst = max(gods, key=lambda r: r["peak_rss_mib"])
        add("godwit peak RSS at most 64 MiB", f"{worst['peak_rss_mib']} MiB (highest, {worst['database']} "
            f"{worst['rows']:,} rows)", worst["peak_rss_mib"] <= 64)
        sizes = sorted({r["rows"] for r in gods if r["database"] == "postgres"})
        if len(sizes) > 1:
            small = next(r for r in gods if r["database"] == "postgres" and r["rows"] == sizes[0])
            big = next(r for r in gods if r["database"] == "postgres" and r["rows"] == sizes[-1])
            x = big["peak_rss_mib"] / small["peak_rss_mib"]
            add(f"godwit peak RSS flat: {sizes[-1]:,} rows within 1.2x of {sizes[0]:,}", f"{x:.2f}x", x <= 1.2)
    for label in ("godwit", "godwit-where"):
        if label in at:
            add(f"{label}: longest transaction at most 0.5 s", f"{at[label]['longest_xact_s']} s",
                at[label]["longest_xact_s"] <= 0.5)
    return out


# --- main ------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few minutes (100k rows)")
    ap.add_argument("--databases", default=",".join(ALL_DBS))
    ap.add_argument("--contenders", default="", help="comma-separated labels (default: all); 'sweep' adds godwit sweeps")
    ap.add_argument("--sizes", default="", help="comma-separated row counts (default 1000000; --quick 100000)")
    ap.add_argument("--big-size", type=int, default=0, help="also run godwit, single and keyset loop at this size "
                    "on PostgreSQL (e.g. 10000000)")
    ap.add_argument("--offset-sizes", default="", help="OFFSET script sizes (default 25k..100k; --quick 5k..20k; "
                    "'none')")
    ap.add_argument("--offset-cap", type=int, default=300)
    ap.add_argument("--offset-only", action="store_true", help="only the OFFSET script's series")
    ap.add_argument("--kill", default="single,godwit,keyset-loop,celery-set-1k", help="contenders killed halfway")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--cap", type=int, default=300, help="seconds after which a contender is stopped and its "
                    "time projected from its rate")
    ap.add_argument("--load-rate", type=int, default=200, help="pgbench -R beside each contender; 0 for none")
    ap.add_argument("--idle-seconds", type=int, default=20)
    ap.add_argument("--godwit", required=True)
    # The servers' URLs come from the environment (scripts/test-services.sh), not the command
    # line, which any user of the machine can read.
    ap.add_argument("--pg", default=os.environ.get("GODWIT_TEST_PG"))
    ap.add_argument("--mysql", default=os.environ.get("GODWIT_TEST_MYSQL"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    sizes = [int(s) for s in (args.sizes or ("100000" if args.quick else "1000000")).split(",")]
    offset_sizes = [] if args.offset_sizes == "none" else [int(s) for s in (args.offset_sizes or ("5000,10000,20000" if args.quick
                                                             else "25000,50000,100000")).split(",")]
    if args.quick:
        args.idle_seconds = min(args.idle_seconds, 8)
    labels = [c for c in args.contenders.split(",") if c and c != "sweep"] or \
        list(GODWIT) + list(OTHERS)
    if "sweep" in args.contenders.split(","):
        labels += list(SWEEP)
    if "single" not in labels:
        labels.insert(0, "single")
    kills = [k for k in args.kill.split(",") if k and k in labels]
    work = ROOT / "bench" / "out" / "compare"
    work.mkdir(parents=True, exist_ok=True)

    started = datetime.datetime.now(datetime.timezone.utc)
    report = {"date": started.strftime("%Y-%m-%d"), "started": started.isoformat(timespec="seconds"),
              "quick": args.quick, "machine": machine(), "loadavg_start": loadavg(),
              "builds_running_at_start": busy_builds(), "best_settings": BEST, "load_rate": args.load_rate,
              "databases": {}, "results": [], "kills": [], "offset": [], "idle_load": None}
    dbs = []
    for name in args.databases.split(","):
        db = {"postgres": lambda: Postgres(args.pg), "mariadb": lambda: MariaDB(args.mysql),
              "sqlite": lambda: SQLite(work)}[name]()
        report["databases"][name] = db.info()
        dbs.append(db)
    log(f"load average {report['loadavg_start']}, {report['builds_running_at_start']} compiler processes running")

    def save():
        report["loadavg_end"] = loadavg()
        report["builds_running_at_end"] = busy_builds()
        idles = [i for i in (report["idle_load"], report.get("idle_load_end")) if i and i.get("p99_ms")]
        report["targets"] = targets(report["results"], report["offset"], min(idles, key=lambda i: i["p99_ms"])
                                    if idles else None)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / (report["date"] + ("-quick" if args.quick else ""))
        stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
        subprocess.run([sys.executable, str(HERE / "render.py"), str(stem.with_suffix(".json"))], check=True)
        return stem

    references = {}

    def idle_load(db, rows):
        """The application load alone on a fresh copy: what the contenders' loads compare with."""
        db.fresh_copy(rows)
        load = Load(db, rows, args.load_rate, work)
        t0 = time.time()
        load.start()
        time.sleep(args.idle_seconds)
        load.stop()
        figures = load.figures(t0 + 0.5, time.time())
        log(f"idle load: p99 {figures['p99_ms']} ms")
        return figures

    def run_size(db, rows, big):
        db.build_source(rows)
        if db.dialect == "postgres" and args.load_rate and report["idle_load"] is None:
            report["idle_load"] = idle_load(db, rows)
        todo = [c for c in labels if applicable(db, c) and (not big or c in ("single", "godwit", "keyset-loop"))]
        for rnd in range(args.rounds):
            order = todo[rnd % len(todo):] + todo[:rnd % len(todo)]
            for label in order:
                r = measure(db, work, label, rows, args.godwit, args.load_rate, timeout=args.cap)
                r["round"] = rnd + 1
                key = (db.dialect, rows)
                if label == "single" and not r.get("error"):
                    references.setdefault(key, r["checksum"])
                report["results"].append(r)
                log(f"{db.name} {rows:,} {label}: {r['seconds']} s, {r['peak_rss_mib']} MiB"
                    + (f", load p99 {r['load']['p99_ms']} ms" if r.get("load") else "")
                    + (f" ERROR {r['error']}" if r.get("error") else ""))
        for r in report["results"]:
            if (r["database"], r["rows"]) == (db.dialect, rows) and "checksum" in r:
                r["same_data"] = r["checksum"] == references.get((db.dialect, rows)) and r["left"] == 0
        save()
        if db.dialect == "postgres" and not big:
            for label in kills:
                base = [r for r in report["results"] if (r["database"], r["rows"], r["contender"]) ==
                        (db.dialect, rows, label) and not r.get("error")]
                if not base:
                    continue
                # Without the load beside it a contender runs faster than it did: at 40% of its
                # measured time the single statement is about halfway.
                k = kill_test(db, work, label, rows, args.godwit, base[0]["seconds"] * 0.4)
                k["uninterrupted_s"] = base[0]["seconds"]
                k["same_data"] = k["checksum"] == references.get((db.dialect, rows)) and k["left"] == 0
                report["kills"].append(k)
                log(f"kill -9 {label}: {k['finish_after_restart_s']} s to finish, "
                    f"{k['updated_twice_or_rolled_back']} updates beyond the rows")
            save()

    for db in dbs:
        for rows in sizes if not args.offset_only else []:
            run_size(db, rows, False)
    pg = next((db for db in dbs if db.dialect == "postgres"), None)
    if pg and args.load_rate and not args.offset_only:
        # Measured again at the end: on a shared machine one idle sample can be unlucky.
        report["idle_load_end"] = idle_load(pg, sizes[-1])
        save()
    if pg and offset_sizes:
        report["offset"] = offset_series(pg, work, offset_sizes, args.offset_cap)
        save()
    # The big size comes last, so that a long run at it leaves the rest measured.
    if pg and args.big_size:
        run_size(pg, args.big_size, True)
    # Where the data of the databases agree, say so: the same generated rows end the same.
    sums = {(r["database"], r["rows"]): r["checksum"] for r in report["results"] if r["contender"] == "single"
            and "checksum" in r}
    report["same_across_databases"] = {str(n): len({v for (d, m), v in sums.items() if m == n}) == 1
                                       for n in {m for (_, m) in sums}}
    stem = save()
    log(f"wrote {stem}.md, .json and .svg")


if __name__ == "__main__":
    main()
