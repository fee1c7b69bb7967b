-- What the worker needs beyond the core schema: the input images of a job (blend, image
-- prompts) and the blob key of a finished grid.

-- Blob keys of the images a job starts from, in the order the user gave them.
ALTER TABLE jobs ADD COLUMN inputs TEXT[] NOT NULL DEFAULT '{}';
-- Blob key of the 2×2 grid of a finished grid job; NULL for single-image jobs.
ALTER TABLE jobs ADD COLUMN grid_key TEXT;
CREATE INDEX jobs_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;

-- Prompt expansion: the user's default for --expand (NULL: the service's), and the prompt a
-- job actually rendered once a text model expanded it.
ALTER TABLE users ADD COLUMN expand BOOLEAN;
ALTER TABLE jobs ADD COLUMN final_prompt TEXT;
