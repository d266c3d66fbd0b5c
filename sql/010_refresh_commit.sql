-- The nightly refresh moves the brand's catalog forward only for what was rendered: a night's
-- added/changed SKUs wait here (staged) until its drop has finished, and then only the SKUs whose
-- renders all succeeded (or whose input is unreadable: that will not fix itself) are committed to
-- catalog_items. A SKU the drop failed stays "changed" for the next night, which retries it.
CREATE TABLE refresh_items (
    brand text NOT NULL,
    night date NOT NULL,
    sku text NOT NULL,
    image_uri text NOT NULL,
    fingerprint text NOT NULL,
    PRIMARY KEY (brand, night, sku),
    FOREIGN KEY (brand, night) REFERENCES refresh_runs (brand, night) ON DELETE CASCADE
);
ALTER TABLE refresh_runs DROP CONSTRAINT refresh_runs_state_check;
ALTER TABLE refresh_runs ADD CONSTRAINT refresh_runs_state_check
    CHECK (state IN ('no_snapshot', 'unchanged', 'invalid', 'empty', 'planned', 'done'));
DROP INDEX refresh_runs_final;
CREATE INDEX refresh_runs_processed ON refresh_runs (brand, snapshot_modified DESC)
    WHERE state IN ('empty', 'planned', 'done');
