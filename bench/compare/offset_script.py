"""The naive script of the serverless story: pages through the table with OFFSET/LIMIT.

Each page of 1,000 rows is read in key order, its old numbers are rewritten in Python, and the
page is written row by row and committed. Reading page k makes the database walk past the k
pages before it, so the whole run grows with the square of the table's size.

    BENCH_PG_URL=postgres://… python offset_script.py [PAGE]
"""
import os
import sys

import psycopg

from phones import rewrite


def main(url, page):
    with psycopg.connect(url, application_name="bench-contender") as conn:
        offset = 0
        while True:
            rows = conn.execute(
                "SELECT id, phone FROM customers ORDER BY id LIMIT %s OFFSET %s", (page, offset)
            ).fetchall()
            if not rows:
                break
            with conn.cursor() as cur:
                for record_id, phone in rows:
                    new = rewrite(phone)
                    if new is not None:
                        cur.execute("UPDATE customers SET phone = %s WHERE id = %s", (new, record_id))
            conn.commit()
            offset += page


if __name__ == "__main__":
    main(os.environ["BENCH_PG_URL"], int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
