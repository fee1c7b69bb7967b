-- Core schema: users, guilds, jobs, images, the fast-quota ledger, the audit log and workers.
-- Text columns with CHECK constraints stand in for enums so new values need no type migration.

CREATE TABLE users (
    id               BIGINT PRIMARY KEY,          -- Discord user id
    default_model    TEXT,
    stylize          SMALLINT,
    lane             TEXT NOT NULL DEFAULT 'fast' CHECK (lane IN ('fast', 'relax')),
    sampler          TEXT,
    banned           BOOLEAN NOT NULL DEFAULT FALSE,
    -- Cached sum of this user's ledger rows, kept in the same transaction as every row.
    fast_balance_ms  BIGINT NOT NULL DEFAULT 0 CHECK (fast_balance_ms >= 0),
    -- Start of the quota period the balance belongs to; NULL before the first grant.
    quota_period     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE guilds (
    id           BIGINT PRIMARY KEY,              -- Discord guild id
    max_running  INTEGER,                         -- NULL: the service default
    max_queued   INTEGER,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE banned_words (
    guild_id  BIGINT NOT NULL REFERENCES guilds (id) ON DELETE CASCADE,
    word      TEXT NOT NULL,
    PRIMARY KEY (guild_id, word)
);

CREATE TABLE workers (
    id            TEXT PRIMARY KEY,
    models        TEXT[] NOT NULL,
    device        TEXT NOT NULL,
    max_pixels    BIGINT NOT NULL,
    max_batch     INTEGER NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id                UUID PRIMARY KEY,
    kind              TEXT NOT NULL CHECK (kind IN ('imagine', 'upscale', 'variation', 'reroll', 'blend')),
    parent_id         UUID REFERENCES jobs (id),
    image_index       SMALLINT,
    -- The button pressed on the parent ("upscale:2", "reroll"); idempotency key with parent_id.
    action            TEXT,
    spec              JSONB NOT NULL,
    model             TEXT NOT NULL,
    lane              TEXT NOT NULL CHECK (lane IN ('fast', 'relax')),
    pixels            BIGINT NOT NULL,
    -- Jobs with equal keys (model, sampler, steps, size) may render in one batch.
    batch_key         TEXT NOT NULL,
    images            INTEGER NOT NULL,
    state             TEXT NOT NULL DEFAULT 'queued'
                      CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    -- Fencing token: raised by every claim; every transition names the attempt it expects.
    attempt           INTEGER NOT NULL DEFAULT 0,
    max_attempts      INTEGER NOT NULL,
    lease_expires_at  TIMESTAMPTZ,
    worker_id         TEXT,
    retry_at          TIMESTAMPTZ,
    queued_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    running_at        TIMESTAMPTZ,
    succeeded_at      TIMESTAMPTZ,
    failed_at         TIMESTAMPTZ,
    cancelled_at      TIMESTAMPTZ,
    error             TEXT,
    reserved_ms       BIGINT NOT NULL DEFAULT 0 CHECK (reserved_ms >= 0),
    cost_ms           BIGINT CHECK (cost_ms >= 0),
    interaction_id    BIGINT NOT NULL,
    user_id           BIGINT NOT NULL REFERENCES users (id),
    guild_id          BIGINT,
    channel_id        BIGINT NOT NULL,
    CHECK (state <> 'running' OR (lease_expires_at IS NOT NULL AND worker_id IS NOT NULL))
);

CREATE UNIQUE INDEX jobs_interaction ON jobs (interaction_id);
-- One live job per button press: same parent, action and user while queued or running.
CREATE UNIQUE INDEX jobs_live_action ON jobs (parent_id, action, user_id)
    WHERE parent_id IS NOT NULL AND state IN ('queued', 'running');
CREATE INDEX jobs_user_live ON jobs (user_id, state) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_guild_live ON jobs (guild_id, state) WHERE state IN ('queued', 'running');
CREATE INDEX jobs_user_queued_at ON jobs (user_id, queued_at);
CREATE INDEX jobs_lease ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_queued ON jobs (queued_at) WHERE state = 'queued';

CREATE TABLE images (
    id        UUID PRIMARY KEY,
    job_id    UUID NOT NULL REFERENCES jobs (id),
    index     SMALLINT NOT NULL,
    blob_key  TEXT NOT NULL,
    width     INTEGER NOT NULL,
    height    INTEGER NOT NULL,
    bytes     BIGINT NOT NULL,
    seed      BIGINT NOT NULL,
    UNIQUE (job_id, index)
);

-- Every movement of fast-lane GPU time. users.fast_balance_ms equals the sum per user.
CREATE TABLE quota_ledger (
    id          BIGSERIAL PRIMARY KEY,
    user_id     BIGINT NOT NULL REFERENCES users (id),
    delta_ms    BIGINT NOT NULL,
    reason      TEXT NOT NULL CHECK (reason IN
                ('period_grant', 'period_expire', 'reserve', 'settle', 'refund', 'admin_grant', 'admin_reset')),
    job_id      UUID REFERENCES jobs (id),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX quota_ledger_user ON quota_ledger (user_id);
-- A job is reserved once and settled or refunded once.
CREATE UNIQUE INDEX quota_ledger_job_once ON quota_ledger (job_id, reason)
    WHERE job_id IS NOT NULL;

CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor_id    BIGINT,                           -- NULL: the service itself
    user_id     BIGINT,
    guild_id    BIGINT,
    action      TEXT NOT NULL,
    detail      JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_user ON audit_log (user_id, at);
