"""A keyset loop on SQLite, which has no stored procedures: 1,000 keys per transaction.

    python keyset_loop_sqlite.py DATABASE_FILE [BATCH]
"""
import sqlite3
import sys

from phones import batch_statement


def main(path, batch):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 10000")
    update = batch_statement("sqlite", "id > ? AND id <= ?")
    last = 0
    while True:
        upper = conn.execute(
            "SELECT max(id) FROM (SELECT id FROM customers WHERE id > ? ORDER BY id LIMIT ?)", (last, batch)
        ).fetchone()[0]
        if upper is None:
            break
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(update, (last, upper))
        conn.execute("COMMIT")
        last = upper


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
