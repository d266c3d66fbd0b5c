-- The ledger: campaigns, their SKUs, renders (one per SKU x output spec) and outputs (one per render key).
CREATE TABLE campaigns (
    campaign_id      text PRIMARY KEY,            -- derived from brand, drop id, manifest bytes, specs, provider
    brand            text NOT NULL,
    drop_id          text NOT NULL,
    manifest_uri     text NOT NULL,
    manifest_sha256  text NOT NULL,
    specs            jsonb NOT NULL,
    provider         text NOT NULL,
    model_version    text NOT NULL,
    priority         text NOT NULL DEFAULT 'normal' CHECK (priority IN ('low', 'normal', 'high')),
    dry_run          boolean NOT NULL DEFAULT false,
    state            text NOT NULL DEFAULT 'registered'
                     CHECK (state IN ('registered', 'planned', 'checking', 'complete', 'partial', 'failed')),
    sku_count        integer,
    render_count     integer,
    shard_size       integer,
    shard_count      integer,
    counts           jsonb,
    qa               jsonb,
    report_uri       text,
    contact_sheet_uri text,
    dag_run_id       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);

CREATE TABLE skus (
    campaign_id  text NOT NULL REFERENCES campaigns ON DELETE CASCADE,
    sku          text NOT NULL,
    row_no       integer NOT NULL,
    title        text NOT NULL,
    category     text NOT NULL,
    image_uri    text NOT NULL,
    fingerprint  text NOT NULL,                    -- content fingerprint of the input image
    attributes   jsonb NOT NULL DEFAULT '{}',
    shard        integer,                          -- NULL: nothing left to render for this SKU
    PRIMARY KEY (campaign_id, sku),
    UNIQUE (campaign_id, row_no)
);
CREATE INDEX skus_by_shard ON skus (campaign_id, shard);

CREATE TABLE outputs (
    render_key   text PRIMARY KEY,                 -- input bytes x output spec x model version
    bucket       text NOT NULL,
    key          text NOT NULL,
    sha256       text NOT NULL,
    bytes        integer NOT NULL,
    width        integer NOT NULL,
    height       integer NOT NULL,
    format       text NOT NULL,
    qa_passed    boolean NOT NULL,
    qa_reason    text,
    campaign_id  text NOT NULL,                    -- the campaign that produced it first
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (bucket, key)
);

CREATE TABLE renders (
    campaign_id      text NOT NULL,
    sku              text NOT NULL,
    spec             text NOT NULL,
    render_key       text NOT NULL,
    shard            integer,
    -- pending -> running -> succeeded | failed; skipped = an identical render already exists.
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'skipped')),
    lease_owner      text,
    lease_expires_at timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    error            text,
    render_ms        integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    PRIMARY KEY (campaign_id, sku, spec),
    FOREIGN KEY (campaign_id, sku) REFERENCES skus ON DELETE CASCADE,
    CHECK (state <> 'running' OR (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL))
);
CREATE INDEX renders_by_shard ON renders (campaign_id, shard, state);
CREATE INDEX renders_by_key ON renders (render_key);
