-- The nightly catalog refresh (atelier.refresh). One row per brand and night: what that night's
-- refresh found and decided. A night in a final state (planned: a delta campaign was handed to
-- catalog_drop; empty: nothing to render) is never processed again, so re-running it is a no-op.
-- no_snapshot / unchanged / invalid are re-evaluated when the night is run again.
CREATE TABLE refresh_runs (
    brand text NOT NULL,
    night date NOT NULL,  -- the local date, in the brand's time zone, of the scheduled refresh
    state text NOT NULL CHECK (state IN ('no_snapshot', 'unchanged', 'invalid', 'empty', 'planned')),
    snapshot_key text,
    snapshot_etag text,
    snapshot_modified timestamptz,
    counts jsonb NOT NULL DEFAULT '{}',  -- added / changed / removed / unchanged / unreadable / rows
    delta_manifest_uri text,
    campaign_id text,
    run_id text,
    conf jsonb,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (brand, night)
);
-- The watermark: the brand's newest final night names the last snapshot processed.
CREATE INDEX refresh_runs_final ON refresh_runs (brand, snapshot_modified DESC)
    WHERE state IN ('empty', 'planned');

-- What the brand's catalog looked like in the last snapshot processed: the diff of the next
-- snapshot is taken against this. Removed SKUs stay, marked, so a returning SKU counts as added.
CREATE TABLE catalog_items (
    brand text NOT NULL,
    sku text NOT NULL,
    image_uri text NOT NULL,
    fingerprint text NOT NULL,
    first_seen date NOT NULL,
    last_changed date NOT NULL,
    removed_on date,
    PRIMARY KEY (brand, sku)
);
