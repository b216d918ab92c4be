-- The application load beside a migration (pgbench -f): a single-row read of the migrated table.
\set id random(1, :rows)
SELECT phone, visits FROM customers WHERE id = :id;
