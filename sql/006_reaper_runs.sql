-- The reaper re-drives a campaign only when its latest Airflow run is over: the first run is
-- dag_run_id, each re-drive (redrive__<campaign>__<n>) is recorded here when it is issued.
ALTER TABLE campaigns ADD COLUMN last_run_id text;
-- Set when reconcile reopens renders of a campaign because an output's object was lost: such a
-- campaign is re-driven (rendered and finalized again) even if some finalize ran after the reopen.
-- Cleared when that re-drive is issued.
ALTER TABLE campaigns ADD COLUMN reopened_at timestamptz;
-- The re-drive count at the last reopen: the re-drive cap counts re-drives since then, while
-- redrives itself keeps counting (run ids stay unique).
ALTER TABLE campaigns ADD COLUMN redrives_at_reopen integer NOT NULL DEFAULT 0;
