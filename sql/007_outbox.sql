-- The notification outbox: one row per (event, subscriber), written in the same transaction as the
-- campaign's terminal state (ledger.finish_campaign), delivered later by atelier.notify. The body
-- is stored exactly as it is signed and sent; the signing secret is never stored here (conn_id
-- names the Airflow connection that holds it).
CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    event_id        text NOT NULL,                     -- deterministic: campaign id x sequence x state
    campaign_id     text NOT NULL REFERENCES campaigns ON DELETE CASCADE,
    seq             integer NOT NULL,                  -- the campaign's n-th outcome: delivery order
    subscriber_url  text NOT NULL,
    conn_id         text NOT NULL,
    body            text NOT NULL,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    last_attempt_at timestamptz,
    last_status     integer,                           -- HTTP status of the last answer, if any
    last_error      text,                              -- why the last attempt failed (never the secret)
    delivered_at    timestamptz,
    dead_at         timestamptz,
    UNIQUE (event_id, subscriber_url),
    UNIQUE (campaign_id, subscriber_url, seq)
);
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX outbox_by_campaign ON outbox (campaign_id, seq);
