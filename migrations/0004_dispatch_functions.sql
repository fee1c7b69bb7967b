-- The dispatch hot path in one round trip each: accepting jobs (several in one transaction),
-- starting a worker's claimed batch and completing it.
--
-- Each used to be five or six statements from the client (begin, lock, count, write,
-- commit), and on a loaded machine the round trips and commits cost more than the work. The
-- same steps now run inside the server as one function call, in the same order and under
-- the same locks. Every statement in a
-- PL/pgSQL function takes a fresh snapshot under READ COMMITTED, so counts made after a row
-- lock is granted see every job committed before it, and a batch's own earlier jobs.
--
-- The three hot-path functions run with sequential scans turned off. They reach rows only by
-- key or through a selective index, so a sequential scan is never the right plan for them;
-- but PL/pgSQL keeps a session's plans, and a plan made while a table was small (a new
-- deployment, a freshly emptied queue) scans that table on every call long after it has
-- grown, until the next ANALYZE. With sequential scans off, the planner keeps to the indexes
-- whatever size it last saw.
--
-- The caps, the quota period and the UTC day come from the caller: the service's settings
-- and clock stay in Rust, and this schema holds no configuration.

-- One movement of fast-lane time: the ledger row and the cached balance together. The
-- caller holds the user's row lock. Returns the new balance.
CREATE FUNCTION huaxian_post(p_user_id BIGINT, p_delta_ms BIGINT, p_reason TEXT, p_job_id UUID)
RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    v_balance BIGINT;
BEGIN
    -- PL/pgSQL, not SQL: its statements' plans are kept for the session, where a SQL
    -- function with data changes is planned again on every call.
    INSERT INTO quota_ledger (user_id, delta_ms, reason, job_id)
    VALUES (p_user_id, p_delta_ms, p_reason, p_job_id);
    UPDATE users SET fast_balance_ms = fast_balance_ms + p_delta_ms WHERE id = p_user_id
    RETURNING fast_balance_ms INTO v_balance;
    RETURN v_balance;
END;
$$;

-- Brings a user whose row the caller has locked into the period starting at `p_period`:
-- what is left of the old grant expires and `p_grant_ms` is posted. Returns the balance.
CREATE FUNCTION huaxian_roll_period(p_user_id BIGINT, p_period TIMESTAMPTZ, p_grant_ms BIGINT)
RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    v_balance BIGINT;
    v_period  TIMESTAMPTZ;
BEGIN
    SELECT fast_balance_ms, quota_period INTO v_balance, v_period
    FROM users WHERE id = p_user_id;
    -- Periods only move forward: a caller that read the clock before waiting for the lock
    -- may bring an older period than another caller already rolled the user into.
    IF v_period >= p_period THEN
        RETURN v_balance;
    END IF;
    IF v_balance > 0 THEN
        PERFORM huaxian_post(p_user_id, -v_balance, 'period_expire', NULL);
    END IF;
    UPDATE users SET quota_period = p_period WHERE id = p_user_id;
    RETURN huaxian_post(p_user_id, p_grant_ms, 'period_grant', NULL);
END;
$$;

-- Records a batch of jobs as queued, or says for each why not. `p_jobs` is a JSON array of
-- objects with the columns read below, `item` numbering them; each answer row names its
-- job by `item`, and jobs are taken in that order. `outcome` is one of:
--   created, existing       the job's ticket columns are set;
--   banned                  the user is banned;
--   quota                   `amount` is the fast time left;
--   user_queue, guild_queue `amount` is the jobs already queued;
--   rate                    the per-minute command cap is reached;
--   daily                   the daily image cap would be passed;
--   banned_word             `word` is the guild's banned word found in the prompt;
--   conflict                the job's keys are taken, and the job holding them was not
--                           found (it cannot happen while jobs are never deleted).
-- A refused job writes nothing, except a quota period roll, which stands on its own.
CREATE FUNCTION huaxian_enqueue(
    p_jobs JSONB,
    p_max_attempts INTEGER, p_queued_per_user BIGINT, p_commands_per_minute BIGINT,
    p_daily_images BIGINT, p_queued_per_guild BIGINT,
    p_period TIMESTAMPTZ, p_grant_ms BIGINT, p_today TIMESTAMPTZ)
RETURNS TABLE (item INTEGER, outcome TEXT, job_id UUID, job_user_id BIGINT, job_lane TEXT,
               job_model TEXT, job_pixels BIGINT, job_batch_key TEXT,
               job_retry_at TIMESTAMPTZ, amount BIGINT, word TEXT)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    j          RECORD;
    v_banned   BOOLEAN;
    v_left     BIGINT;
    v_period   TIMESTAMPTZ;
    v_reserved BIGINT;
    v_queued   BIGINT;
    v_recent   BIGINT;
    v_images   BIGINT;
    v_max      BIGINT;
    v_created  UUID;
    v_existing jobs;
BEGIN
    -- Every user of the batch, then every guild, is created if new and locked, each in id
    -- order: the order start_batch locks them in too, so two batches, or a batch and a
    -- claim, never wait on each other in a cycle. Caps below are counted under these locks.
    INSERT INTO users (id)
    SELECT DISTINCT (e->>'user_id')::BIGINT FROM jsonb_array_elements(p_jobs) e ORDER BY 1
    ON CONFLICT DO NOTHING;
    PERFORM 1 FROM users
    WHERE id IN (SELECT (e->>'user_id')::BIGINT FROM jsonb_array_elements(p_jobs) e)
    ORDER BY id FOR UPDATE;
    INSERT INTO guilds (id)
    SELECT DISTINCT (e->>'guild_id')::BIGINT FROM jsonb_array_elements(p_jobs) e
    WHERE e->>'guild_id' IS NOT NULL ORDER BY 1
    ON CONFLICT DO NOTHING;
    PERFORM 1 FROM guilds
    WHERE id IN (SELECT (e->>'guild_id')::BIGINT FROM jsonb_array_elements(p_jobs) e)
    ORDER BY id FOR UPDATE;

    FOR j IN
        SELECT * FROM jsonb_to_recordset(p_jobs) AS r (
            item INTEGER, id UUID, kind TEXT, parent_id UUID, image_index SMALLINT,
            action TEXT, spec JSONB, model TEXT, lane TEXT, pixels BIGINT, batch_key TEXT,
            images INTEGER, estimate_ms BIGINT, interaction_id BIGINT, part SMALLINT,
            user_id BIGINT, guild_id BIGINT, channel_id BIGINT, inputs TEXT[],
            prompt_lower TEXT)
        ORDER BY item
    LOOP
        item := j.item;
        outcome := NULL; job_id := NULL; job_user_id := NULL; job_lane := NULL;
        job_model := NULL; job_pixels := NULL; job_batch_key := NULL; job_retry_at := NULL;
        amount := NULL; word := NULL;

        SELECT banned, fast_balance_ms, quota_period INTO v_banned, v_left, v_period
        FROM users WHERE id = j.user_id;
        v_reserved := 0;
        IF NOT v_banned AND j.lane = 'fast' THEN
            IF v_period IS NULL OR v_period < p_period THEN
                v_left := huaxian_roll_period(j.user_id, p_period, p_grant_ms);
            END IF;
            v_reserved := j.estimate_ms;
        END IF;

        IF v_banned THEN
            outcome := 'banned';
        ELSIF v_left < v_reserved THEN
            outcome := 'quota'; amount := v_left;
        ELSE
            SELECT COUNT(*) FILTER (WHERE state = 'queued'),
                   COUNT(*) FILTER (WHERE queued_at > now() - interval '1 minute'),
                   COALESCE(SUM(images) FILTER (WHERE queued_at >= p_today
                                                AND state NOT IN ('failed', 'cancelled')), 0)
            INTO v_queued, v_recent, v_images
            FROM jobs
            WHERE user_id = j.user_id
              AND (state = 'queued' OR queued_at > now() - interval '1 minute'
                   OR queued_at >= p_today);
            IF v_queued >= p_queued_per_user THEN
                outcome := 'user_queue'; amount := v_queued;
            ELSIF v_recent >= p_commands_per_minute THEN
                outcome := 'rate'; amount := v_recent;
            ELSIF v_images + j.images > p_daily_images THEN
                outcome := 'daily'; amount := v_images;
            ELSIF j.guild_id IS NOT NULL THEN
                SELECT COALESCE(max_queued::BIGINT, p_queued_per_guild) INTO v_max
                FROM guilds WHERE id = j.guild_id;
                SELECT COUNT(*) INTO v_queued FROM jobs
                WHERE guild_id = j.guild_id AND state = 'queued';
                IF v_queued >= v_max THEN
                    outcome := 'guild_queue'; amount := v_queued;
                ELSE
                    SELECT banned_words.word INTO word FROM banned_words
                    WHERE guild_id = j.guild_id
                      AND strpos(j.prompt_lower, banned_words.word) > 0
                    ORDER BY banned_words.word LIMIT 1;
                    IF FOUND THEN
                        outcome := 'banned_word';
                    END IF;
                END IF;
            END IF;

            IF outcome IS NULL THEN
                INSERT INTO jobs (id, kind, parent_id, image_index, action, spec, model, lane,
                                  pixels, batch_key, images, max_attempts, reserved_ms,
                                  interaction_id, user_id, guild_id, channel_id, inputs, part)
                VALUES (j.id, j.kind, j.parent_id, j.image_index, j.action, j.spec, j.model,
                        j.lane, j.pixels, j.batch_key, j.images, p_max_attempts, v_reserved,
                        j.interaction_id, j.user_id, j.guild_id, j.channel_id,
                        COALESCE(j.inputs, '{}'), j.part)
                ON CONFLICT DO NOTHING
                RETURNING id INTO v_created;
                IF v_created IS NOT NULL THEN
                    IF v_reserved > 0 THEN
                        -- huaxian_post's two writes, in one statement on this hot path.
                        WITH entry AS (
                            INSERT INTO quota_ledger (user_id, delta_ms, reason, job_id)
                            VALUES (j.user_id, -v_reserved, 'reserve', v_created))
                        UPDATE users SET fast_balance_ms = fast_balance_ms - v_reserved
                        WHERE id = j.user_id;
                    END IF;
                    outcome := 'created'; job_id := v_created; job_user_id := j.user_id;
                    job_lane := j.lane; job_model := j.model; job_pixels := j.pixels;
                    job_batch_key := j.batch_key;
                    RETURN NEXT;
                    CONTINUE;
                END IF;
                -- The interaction or button already has a job (found below).
                outcome := 'conflict';
            END IF;
        END IF;

        -- Refused, or in conflict: a job this interaction part already made, or this
        -- button on this parent while that job is live, is the answer instead, because a
        -- repeated request must get the same answer whatever changed since.
        SELECT * INTO v_existing FROM jobs
        WHERE (interaction_id = j.interaction_id AND part = j.part)
           OR (parent_id = j.parent_id AND action = j.action AND user_id = j.user_id
               AND state IN ('queued', 'running'))
        LIMIT 1;
        IF FOUND THEN
            outcome := 'existing'; job_id := v_existing.id; job_user_id := v_existing.user_id;
            job_lane := v_existing.lane; job_model := v_existing.model;
            job_pixels := v_existing.pixels; job_batch_key := v_existing.batch_key;
            job_retry_at := v_existing.retry_at; amount := NULL; word := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- Starts the claimed jobs `p_ids` for `p_worker` under the running caps, raising each
-- started job's attempt (the fencing token). Answers `started` (with the new attempt and
-- the spec) or `busy` (its user or guild is at its running cap) per job; jobs no longer
-- waiting are not answered. Jobs are locked in id order, then their users, then their
-- guilds, each in id order, as every transition does.
CREATE FUNCTION huaxian_start(p_ids UUID[], p_worker TEXT, p_lease INTERVAL,
                              p_running_per_user BIGINT, p_running_per_guild BIGINT)
RETURNS TABLE (job_id UUID, outcome TEXT, job_attempt INTEGER, job_spec JSONB)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    w          RECORD;
    -- The waiting jobs, in id order.
    w_ids      UUID[] := '{}';
    w_users    BIGINT[] := '{}';
    w_guilds   BIGINT[] := '{}';
    w_attempts INTEGER[] := '{}';
    -- Running jobs per user and room per guild, as parallel arrays (a batch is small).
    u_ids      BIGINT[];
    u_running  BIGINT[];
    g_ids      BIGINT[];
    g_room     BIGINT[];
    s_ids      UUID[] := '{}';
    s_attempts INTEGER[] := '{}';
    b_ids      UUID[] := '{}';
    i          INTEGER;
    u          INTEGER;
    g          INTEGER;
BEGIN
    -- The lock is NO KEY UPDATE, the one an UPDATE takes, so that a row in another state
    -- (a finished parent, named by a stale entry) never blocks the foreign-key check of an
    -- enqueue inserting its child while that enqueue holds a user this call waits for.
    -- Rows are found by id alone and their state is checked here, under the lock: a
    -- state condition in the query would let the planner scan the partial index of every
    -- queued job, which it prefers whenever its statistics were taken while the queue was
    -- short, and which costs as much as the queue is long.
    FOR w IN
        SELECT id, user_id, guild_id, attempt, state, retry_at FROM jobs
        WHERE id = ANY(p_ids)
        ORDER BY id FOR NO KEY UPDATE
    LOOP
        CONTINUE WHEN w.state <> 'queued' OR w.retry_at > now();
        w_ids := array_append(w_ids, w.id);
        w_users := array_append(w_users, w.user_id);
        w_guilds := array_append(w_guilds, w.guild_id);
        w_attempts := array_append(w_attempts, w.attempt);
    END LOOP;
    IF cardinality(w_ids) = 0 THEN
        RETURN;
    END IF;

    PERFORM 1 FROM users WHERE id = ANY(w_users) ORDER BY id FOR UPDATE;
    SELECT COALESCE(array_agg(id), '{}'), COALESCE(array_agg(running), '{}')
    INTO u_ids, u_running
    FROM (SELECT users.id, (SELECT COUNT(*) FROM jobs
                            WHERE jobs.user_id = users.id AND state = 'running') AS running
          FROM users WHERE users.id = ANY(w_users)) c;

    PERFORM 1 FROM guilds WHERE id = ANY(w_guilds) ORDER BY id FOR UPDATE;
    SELECT COALESCE(array_agg(id), '{}'), COALESCE(array_agg(room), '{}')
    INTO g_ids, g_room
    FROM (SELECT guilds.id,
                 COALESCE(guilds.max_running::BIGINT, p_running_per_guild)
                 - (SELECT COUNT(*) FROM jobs
                    WHERE jobs.guild_id = guilds.id AND state = 'running') AS room
          FROM guilds WHERE guilds.id = ANY(w_guilds)) c;

    FOR i IN 1 .. cardinality(w_ids) LOOP
        u := array_position(u_ids, w_users[i]);
        g := array_position(g_ids, w_guilds[i]);
        IF u_running[u] >= p_running_per_user OR (g IS NOT NULL AND g_room[g] <= 0) THEN
            b_ids := array_append(b_ids, w_ids[i]);
        ELSE
            u_running[u] := u_running[u] + 1;
            IF g IS NOT NULL THEN
                g_room[g] := g_room[g] - 1;
            END IF;
            s_ids := array_append(s_ids, w_ids[i]);
            s_attempts := array_append(s_attempts, w_attempts[i]);
        END IF;
    END LOOP;

    RETURN QUERY
        UPDATE jobs SET state = 'running', attempt = jobs.attempt + 1, worker_id = p_worker,
                        lease_expires_at = now() + p_lease, running_at = now(), retry_at = NULL
        FROM UNNEST(s_ids, s_attempts) AS held (id, attempt)
        WHERE jobs.id = held.id AND jobs.attempt = held.attempt
        RETURNING jobs.id, 'started', jobs.attempt, jobs.spec;
    RETURN QUERY SELECT b, 'busy', NULL::INTEGER, NULL::JSONB FROM UNNEST(b_ids) AS b;
END;
$$;

-- Completes the jobs `p_ids` that `p_worker` still holds at `p_attempts`: marks them
-- succeeded, records their images and settles their fast-lane cost, with each job row
-- written once. `p_img_job` names the job of each image in the `p_img_*` arrays. Answers
-- the jobs it completed with their user and the cost charged; the others are stale. Jobs
-- are locked in id order, then their users in id order, as every transition does.
--
-- Settling: the unused part of a reservation comes back; an overrun is charged as far as
-- the balance goes, since a balance never goes negative. Jobs are settled in the order
-- given, which matters only when one user's balance runs out within a batch.
CREATE FUNCTION huaxian_complete(
    p_worker TEXT, p_ids UUID[], p_attempts INTEGER[], p_measured_ms BIGINT[],
    p_grids TEXT[], p_prompts TEXT[],
    p_img_id UUID[], p_img_job UUID[], p_img_index SMALLINT[], p_img_key TEXT[],
    p_img_width INTEGER[], p_img_height INTEGER[], p_img_bytes BIGINT[], p_img_seed BIGINT[])
RETURNS TABLE (job_id UUID, job_user_id BIGINT, job_cost_ms BIGINT)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    h          RECORD;
    h_ids      UUID[] := '{}';
    h_users    BIGINT[] := '{}';
    h_fast     BOOLEAN[] := '{}';
    h_reserved BIGINT[] := '{}';
    f_users    BIGINT[] := '{}';
    u_ids      BIGINT[];
    u_balance  BIGINT[];
    -- Per held job, in the order given.
    d_ids      UUID[] := '{}';
    d_users    BIGINT[] := '{}';
    d_costs    BIGINT[] := '{}';
    d_grids    TEXT[] := '{}';
    d_prompts  TEXT[] := '{}';
    l_users    BIGINT[] := '{}';
    l_deltas   BIGINT[] := '{}';
    l_jobs     UUID[] := '{}';
    i          INTEGER;
    k          INTEGER;
    u          INTEGER;
    v_delta    BIGINT;
BEGIN
    -- Found by id alone and checked under the lock, as in huaxian_start.
    FOR h IN
        SELECT id, user_id, lane, reserved_ms, state, worker_id, attempt FROM jobs
        WHERE id = ANY(p_ids)
        ORDER BY id FOR NO KEY UPDATE
    LOOP
        CONTINUE WHEN h.state <> 'running' OR h.worker_id IS DISTINCT FROM p_worker
                      OR h.attempt <> p_attempts[array_position(p_ids, h.id)];
        h_ids := array_append(h_ids, h.id);
        h_users := array_append(h_users, h.user_id);
        h_fast := array_append(h_fast, (h.lane = 'fast'));
        h_reserved := array_append(h_reserved, h.reserved_ms);
        IF h.lane = 'fast' THEN
            f_users := array_append(f_users, h.user_id);
        END IF;
    END LOOP;
    IF cardinality(h_ids) = 0 THEN
        RETURN;
    END IF;

    SELECT COALESCE(array_agg(id), '{}'), COALESCE(array_agg(fast_balance_ms), '{}')
    INTO u_ids, u_balance
    FROM (SELECT id, fast_balance_ms FROM users WHERE id = ANY(f_users)
          ORDER BY id FOR UPDATE) locked;

    FOR i IN 1 .. cardinality(p_ids) LOOP
        k := array_position(h_ids, p_ids[i]);
        CONTINUE WHEN k IS NULL;
        d_ids := array_append(d_ids, h_ids[k]);
        d_users := array_append(d_users, h_users[k]);
        d_grids := array_append(d_grids, p_grids[i]);
        d_prompts := array_append(d_prompts, p_prompts[i]);
        IF h_fast[k] THEN
            u := array_position(u_ids, h_users[k]);
            v_delta := GREATEST(h_reserved[k] - p_measured_ms[i], -u_balance[u]);
            u_balance[u] := u_balance[u] + v_delta;
            l_users := array_append(l_users, h_users[k]);
            l_deltas := array_append(l_deltas, v_delta);
            l_jobs := array_append(l_jobs, h_ids[k]);
            d_costs := array_append(d_costs, (h_reserved[k] - v_delta));
        ELSE
            d_costs := array_append(d_costs, 0::BIGINT);
        END IF;
    END LOOP;

    IF cardinality(l_jobs) > 0 THEN
        INSERT INTO quota_ledger (user_id, delta_ms, reason, job_id)
        SELECT e.user_id, e.delta_ms, 'settle', e.job_id
        FROM UNNEST(l_users, l_deltas, l_jobs) AS e (user_id, delta_ms, job_id);
        UPDATE users SET fast_balance_ms = b.balance
        FROM UNNEST(u_ids, u_balance) AS b (id, balance)
        WHERE users.id = b.id;
    END IF;
    UPDATE jobs SET state = 'succeeded', succeeded_at = now(), lease_expires_at = NULL,
                    grid_key = d.grid, final_prompt = d.prompt, cost_ms = d.cost
    FROM UNNEST(d_ids, d_grids, d_prompts, d_costs) AS d (id, grid, prompt, cost)
    WHERE jobs.id = d.id;
    IF cardinality(p_img_id) > 0 THEN
        INSERT INTO images (id, job_id, index, blob_key, width, height, bytes, seed)
        SELECT * FROM UNNEST(p_img_id, p_img_job, p_img_index, p_img_key, p_img_width,
                             p_img_height, p_img_bytes, p_img_seed)
                      AS i (id, job_id, index, blob_key, width, height, bytes, seed)
        WHERE i.job_id = ANY(d_ids);
    END IF;
    RETURN QUERY SELECT * FROM UNNEST(d_ids, d_users, d_costs);
END;
$$;
