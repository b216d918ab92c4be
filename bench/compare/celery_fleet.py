"""The Celery + Redis worker fleet of the parcel team's story, in two shapes.

Started by the harness as `celery -A celery_fleet worker` (one prefork process per core, late
acknowledgements, one task fetched at a time) beside a Redis of its own, and driven by
`python celery_fleet.py SHAPE IDS_PER_TASK`, which selects the ids to change up front, sends one
task per batch of ids, and waits for every result (kept in Redis).

- `record`: as the parcel team built it. Each record is read, transformed in Python and
  written on its own (one short transaction per record).
- `set`: the best form of the design. One set-based UPDATE per task over its ids.

Environment: BENCH_PG_URL (the database), BENCH_REDIS_URL, BENCH_READY_FILE (touched when a
worker is ready, for the harness).
"""
import os
import sys

import psycopg
from celery import Celery, group
from celery.signals import worker_process_init, worker_ready

from phones import batch_statement, rewrite

app = Celery("celery_fleet", broker=os.environ["BENCH_REDIS_URL"], backend=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_acks_late=True,
    # Late acks alone still acknowledge a task whose worker process is killed under it (the
    # parent sees the child die first): without this, a kill -9 of the fleet can lose a task.
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # A task fetched by a worker that dies is handed out again once it has been unacknowledged
    # this long (the default is an hour) and a sweep finds it (by default about every 100 s):
    # shortened so that a killed fleet resumes within seconds. Every task here takes well
    # under 10 s, so none is handed out twice while it runs.
    broker_transport_options={"visibility_timeout": 10, "unacked_restore_interval": 2,
                              "unacked_restore_throttle": 1},
    result_expires=3600,
    worker_hijack_root_logger=False,
)

_conn = None


@worker_process_init.connect
def _connect(**_):
    global _conn
    _conn = psycopg.connect(os.environ["BENCH_PG_URL"], autocommit=True, application_name="bench-celery")


@worker_ready.connect
def _ready(**_):
    path = os.environ.get("BENCH_READY_FILE")
    if path:
        open(path, "w").close()


@app.task(name="record")
def record_by_record(ids):
    """Reads, transforms and writes each record on its own, as the parcel team's tool did."""
    changed = 0
    for record_id in ids:
        row = _conn.execute("SELECT phone FROM customers WHERE id = %s", (record_id,)).fetchone()
        if row is None:
            continue
        new = rewrite(row[0])
        if new is None:
            continue
        _conn.execute("UPDATE customers SET phone = %s WHERE id = %s", (new, record_id))
        changed += 1
    return changed


SET_SQL = batch_statement("postgres", "id = ANY(%s)")


@app.task(name="set")
def set_based(ids):
    """One UPDATE over the task's ids, in one transaction."""
    return _conn.execute(SET_SQL, (ids,)).rowcount


def submit(shape, per_task):
    with psycopg.connect(os.environ["BENCH_PG_URL"], application_name="bench-celery-submit") as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM customers WHERE length(phone) = 11 ORDER BY id")]
    task = {"record": record_by_record, "set": set_based}[shape]
    chunks = [ids[i:i + per_task] for i in range(0, len(ids), per_task)]
    result = group(task.s(chunk) for chunk in chunks).apply_async()
    changed = sum(result.get(timeout=3600, interval=0.05))
    print(f"{len(chunks)} tasks, {changed} rows changed")


if __name__ == "__main__":
    submit(sys.argv[1], int(sys.argv[2]))
