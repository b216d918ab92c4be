"""The hand-written server-side keyset loop: a stored procedure that walks the primary key
1,000 keys at a time and commits after each range, as the teams in the story wrote them. It keeps
no state: killed, it starts again from the first key (the filter skips rows already changed).
"""
from phones import new_phone_sql, FILTER


def procedure(dialect):
    """The CREATE PROCEDURE statement (one statement, no client delimiter needed)."""
    if dialect == "postgres":
        return f"""
CREATE OR REPLACE PROCEDURE bench_keyset_loop(batch int DEFAULT 1000)
LANGUAGE plpgsql AS $$
DECLARE
  last_id bigint := 0;
  upper_id bigint;
BEGIN
  LOOP
    SELECT max(id) INTO upper_id FROM (SELECT id FROM customers WHERE id > last_id ORDER BY id LIMIT batch) AS page;
    EXIT WHEN upper_id IS NULL;
    UPDATE customers SET phone = {new_phone_sql(dialect)}
    WHERE id > last_id AND id <= upper_id AND {FILTER};
    last_id := upper_id;
    COMMIT;
  END LOOP;
END $$"""
    if dialect == "mariadb":
        return f"""
CREATE PROCEDURE bench_keyset_loop(IN batch INT)
BEGIN
  DECLARE last_id BIGINT DEFAULT 0;
  DECLARE upper_id BIGINT;
  walk: LOOP
    SELECT max(id) INTO upper_id FROM (SELECT id FROM customers WHERE id > last_id ORDER BY id LIMIT batch) AS page;
    IF upper_id IS NULL THEN LEAVE walk; END IF;
    START TRANSACTION;
    UPDATE customers SET phone = {new_phone_sql(dialect)}
    WHERE id > last_id AND id <= upper_id AND {FILTER};
    COMMIT;
    SET last_id = upper_id;
  END LOOP;
END"""
    raise ValueError(dialect)
