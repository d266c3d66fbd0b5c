-- The output a render uses, by the render key of what actually produced it: a fallback's output is
-- keyed by the fallback (service, model, brand style), never filed under the primary's key.
ALTER TABLE renders ADD COLUMN output_render_key text;
-- The provider job a deferred render waits on ("<service>:<job id>"): a render whose trigger ran out
-- of time resumes polling this job instead of creating (and paying for) a second one.
ALTER TABLE renders ADD COLUMN job_ref text;
UPDATE renders SET output_render_key = render_key WHERE state IN ('succeeded', 'skipped');
CREATE INDEX renders_by_output_key ON renders (output_render_key);
