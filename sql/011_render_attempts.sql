-- Re-running what failed (atelier.retry): a campaign's failed renders can be re-queued as a new
-- attempt of the same campaign. `renders` keeps each render's current attempt; every earlier
-- attempt's outcome is kept in `render_attempts`, so history survives and counts never double.
ALTER TABLE campaigns ADD COLUMN attempt integer NOT NULL DEFAULT 1;   -- 1 + retries requested
ALTER TABLE renders ADD COLUMN attempt integer NOT NULL DEFAULT 1;     -- the campaign attempt of its current state

-- One row per closed attempt of a render (the attempt it had before it was re-queued).
CREATE TABLE render_attempts (
    campaign_id  text NOT NULL,
    sku          text NOT NULL,
    spec         text NOT NULL,
    attempt      integer NOT NULL,
    state        text NOT NULL,          -- what that attempt ended as (failed; pending/running if it never finished)
    error        text,
    served_by    text,
    claims       integer NOT NULL,       -- renders.attempts when it closed (claims so far)
    render_ms    integer,
    finished_at  timestamptz,
    run_id       text,                   -- the Airflow run that made that attempt
    closed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, sku, spec, attempt),
    FOREIGN KEY (campaign_id, sku, spec) REFERENCES renders ON DELETE CASCADE
);

-- One row per retry request: who asked, what filter, how many renders it re-queued and kept.
CREATE TABLE campaign_attempts (
    campaign_id    text NOT NULL REFERENCES campaigns ON DELETE CASCADE,
    attempt        integer NOT NULL,     -- the attempt this request started (2, 3, ...)
    run_id         text NOT NULL,        -- retry__<campaign>__<attempt>, or the run whose cleared shard re-ran
    source         text NOT NULL,        -- 'retry' (CLI / API / page) or 'clear' (a render task cleared in Airflow)
    previous_state text NOT NULL,
    previous_counts jsonb,
    reason_contains text,
    forced         boolean NOT NULL DEFAULT false,
    requeued       integer NOT NULL,
    kept           integer NOT NULL,
    requested_by   text,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, attempt)
);
