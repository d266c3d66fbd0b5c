-- Human approval (brands with "approval": "required"): a reviewer approves the campaign after the
-- quality gate, or rejects it with a reason; the decision (who, when, reason, timed out) is kept.
ALTER TABLE campaigns DROP CONSTRAINT campaigns_state_check;
ALTER TABLE campaigns ADD CONSTRAINT campaigns_state_check
    CHECK (state IN ('registered', 'planned', 'checking', 'complete', 'partial', 'failed', 'rejected'));
ALTER TABLE campaigns ADD COLUMN approval jsonb;
