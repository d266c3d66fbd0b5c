-- What a campaign cost: raw measurements, priced when shown (atelier.cost).
--
-- render_costs: what ONE claim of a render spent, per provider it called. The claim (the lease owner
-- "<task instance>#<try>" and the render's attempt number) owns its numbers: they are written once,
-- by the lease holder, before it records the outcome. A retry or a takeover is a new claim with its
-- own row; a worker that lost its lease writes nothing; writing the same claim again changes nothing.
CREATE TABLE render_costs (
    campaign_id  text NOT NULL,
    sku          text NOT NULL,
    spec         text NOT NULL,
    claim        text NOT NULL,                 -- "<lease owner>@<attempt>"
    provider     text NOT NULL,                 -- the provider entry called (providers.json)
    calls        integer NOT NULL CHECK (calls >= 0),      -- HTTP requests sent; in-process: render invocations
    render_ms    integer NOT NULL CHECK (render_ms >= 0),  -- time that provider spent producing the image
    images       integer NOT NULL CHECK (images IN (0, 1)), -- 1: this claim got its output from this provider
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, sku, spec, claim, provider)
);
CREATE INDEX render_costs_by_campaign ON render_costs (campaign_id, provider);

-- shard_costs: worker slot time, measured where the shard runs: start to end of one stretch of a
-- shard's work in a task (a sync shard is one stretch; a deferred one a stretch per submit/resume,
-- the time deferred in the triggerer is not slot time). Keyed by who worked and which stretch.
CREATE TABLE shard_costs (
    campaign_id  text NOT NULL,
    shard        integer NOT NULL,
    owner        text NOT NULL,                 -- the lease owner: "<task instance>#<try>"
    segment      integer NOT NULL,              -- 0, 1, … : the stretch of that try
    provider     text NOT NULL,                 -- the shard's provider (the campaign's primary: its pool)
    slot_ms      bigint NOT NULL CHECK (slot_ms >= 0),
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, shard, owner, segment)
);
CREATE INDEX shard_costs_by_campaign ON shard_costs (campaign_id, provider);
