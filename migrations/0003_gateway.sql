-- What the Discord gateway needs beyond the worker's schema.

-- One interaction may make several jobs (`--repeat`, `{a, b}` permutations): the n-th job of
-- an interaction is its part n, and an (interaction, part) makes at most one job.
ALTER TABLE jobs ADD COLUMN part SMALLINT NOT NULL DEFAULT 0 CHECK (part >= 0);
DROP INDEX jobs_interaction;
CREATE UNIQUE INDEX jobs_interaction ON jobs (interaction_id, part);

-- Admin statistics read jobs of the last hour by when they ended.
CREATE INDEX jobs_ended ON jobs ((COALESCE(succeeded_at, failed_at, cancelled_at)))
    WHERE state IN ('succeeded', 'failed', 'cancelled');
