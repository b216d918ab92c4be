"""Workload 1 of the comparison: the 2018 Vietnamese mobile renumbering.

The real prefix table (the same as examples/vn-phones.toml): an 11-digit number starting with
one of these four-digit prefixes becomes the three-digit prefix followed by its last seven
digits. Every contender applies this table, in SQL or in Python, and must end with the same
data.
"""

PREFIXES = {
    "0162": "032", "0163": "033", "0164": "034", "0165": "035", "0166": "036",
    "0167": "037", "0168": "038", "0169": "039",
    "0120": "070", "0121": "079", "0122": "077", "0126": "076", "0128": "078",
    "0123": "083", "0124": "084", "0125": "085", "0127": "081", "0129": "082",
    "0186": "056", "0188": "058", "0199": "059",
}
OLD = sorted(PREFIXES)


def rewrite(phone):
    """The new number, or None when the number is not an old 11-digit one."""
    if len(phone) != 11:
        return None
    new = PREFIXES.get(phone[:4])
    return None if new is None else new + phone[4:]


def _case():
    whens = " ".join(f"WHEN '{old}' THEN '{new}'" for old, new in PREFIXES.items())
    return f"CASE substr(phone, 1, 4) {whens} END"


def new_phone_sql(dialect):
    """The SQL expression of the new number (MariaDB has no `||` for strings by default)."""
    if dialect == "mariadb":
        return f"CONCAT({_case()}, substr(phone, 5))"
    return f"{_case()} || substr(phone, 5)"


FILTER = "length(phone) = 11 AND substr(phone, 1, 4) IN (" + ", ".join(f"'{p}'" for p in OLD) + ")"


def single_statement(dialect):
    """The monolithic UPDATE: every row in one statement and one transaction."""
    return f"UPDATE customers SET phone = {new_phone_sql(dialect)} WHERE {FILTER}"


def batch_statement(dialect, key_range):
    """The UPDATE of one key range; `key_range` is the SQL condition on `id`."""
    return f"UPDATE customers SET phone = {new_phone_sql(dialect)} WHERE {key_range} AND {FILTER}"


def generate_sql(dialect, table, rows):
    """SQL that fills `table` (id, name, phone, visits) with `rows` deterministic customers.

    Every third customer carries an old 11-digit number, its prefix taken in turn from the
    table; the others a 10-digit number starting with 09. The same ids get the same numbers on
    every database, so the final data of all of them compare equal.
    """
    olds = OLD
    pick = " ".join(f"WHEN {i} THEN '{p}'" for i, p in enumerate(olds))
    if dialect == "postgres":
        return f"""
INSERT INTO {table}
SELECT i, 'Customer ' || i,
       CASE WHEN i % 3 = 0
            THEN (CASE (i / 3) % {len(olds)} {pick} END) || lpad(((i * 7919) % 10000000)::text, 7, '0')
            ELSE '09' || lpad(((i * 104729) % 100000000)::text, 8, '0') END,
       0
FROM generate_series(1::bigint, {rows}) AS i"""
    if dialect == "mariadb":
        return f"""
INSERT INTO {table}
SELECT seq, CONCAT('Customer ', seq),
       CASE WHEN seq % 3 = 0
            THEN CONCAT(CASE (seq DIV 3) % {len(olds)} {pick} END, lpad((seq * 7919) % 10000000, 7, '0'))
            ELSE CONCAT('09', lpad((seq * 104729) % 100000000, 8, '0')) END,
       0
FROM seq_1_to_{rows}"""
    if dialect == "sqlite":
        return f"""
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {rows})
INSERT INTO {table}
SELECT i, 'Customer ' || i,
       CASE WHEN i % 3 = 0
            THEN (CASE (i / 3) % {len(olds)} {pick} END) || substr('0000000' || ((i * 7919) % 10000000), -7)
            ELSE '09' || substr('00000000' || ((i * 104729) % 100000000), -8) END,
       0
FROM s"""
    raise ValueError(dialect)


def to_rewrite(rows):
    """How many of `rows` generated customers carry an old number."""
    return rows // 3
