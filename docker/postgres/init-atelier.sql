-- Runs once, when the postgres container initialises an empty data directory: the ledger's own
-- database beside Airflow's metadata database (POSTGRES_DB), both owned by POSTGRES_USER, as in
-- the local stack (scripts/stack.sh start_postgres).
CREATE DATABASE atelier;
