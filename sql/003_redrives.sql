-- How often the reaper re-drove a campaign (the next re-drive's run id is derived from it).
ALTER TABLE campaigns ADD COLUMN redrives integer NOT NULL DEFAULT 0;
