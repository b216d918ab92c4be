-- The application load beside a migration (pgbench -f): a single-row write of the migrated
-- table (a column no contender changes, so the final phone numbers still compare equal).
\set id random(1, :rows)
UPDATE customers SET visits = visits + 1 WHERE id = :id;
