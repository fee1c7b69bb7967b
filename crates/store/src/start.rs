//! Starting claimed jobs, one or a batch per transaction, under the running caps.

use std::collections::HashMap;

use chrono::Duration;
use uuid::Uuid;

use crate::{Start, Store, StoreError};

impl Store {
    /// Moves a queued job to running for `worker`, raising its attempt: the new attempt is
    /// the fencing token every later call about this job must present.
    pub async fn start(
        &self,
        job_id: Uuid,
        worker: &str,
        lease: Duration,
    ) -> Result<Start, StoreError> {
        let mut started = self.start_batch(&[job_id], worker, lease).await?;
        Ok(started.pop().map_or(Start::Gone, |(_, start)| start))
    }

    /// Starts several jobs for one worker in one transaction; returns each job's outcome in
    /// the order given. Jobs are locked in id order, then their users and guilds in id order,
    /// the same order every transition uses, so concurrent batches cannot deadlock.
    pub async fn start_batch(
        &self,
        job_ids: &[Uuid],
        worker: &str,
        lease: Duration,
    ) -> Result<Vec<(Uuid, Start)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let waiting: Vec<(Uuid, i64, Option<i64>, i32)> = sqlx::query_as(
            "SELECT id, user_id, guild_id, attempt FROM jobs \
             WHERE id = ANY($1) AND state = 'queued' AND (retry_at IS NULL OR retry_at <= now()) \
             ORDER BY id FOR UPDATE",
        )
        .bind(job_ids)
        .fetch_all(&mut *tx)
        .await?;

        let mut users: Vec<i64> = waiting.iter().map(|w| w.1).collect();
        users.sort_unstable();
        users.dedup();
        let mut guilds: Vec<i64> = waiting.iter().filter_map(|w| w.2).collect();
        guilds.sort_unstable();
        guilds.dedup();

        sqlx::query("SELECT id FROM users WHERE id = ANY($1) ORDER BY id FOR UPDATE")
            .bind(&users)
            .execute(&mut *tx)
            .await?;
        let mut user_running: HashMap<i64, i64> = sqlx::query_as(
            "SELECT user_id, COUNT(*) FROM jobs \
             WHERE user_id = ANY($1) AND state = 'running' GROUP BY user_id",
        )
        .bind(&users)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();

        let mut guild_room: HashMap<i64, i64> = HashMap::new();
        if !guilds.is_empty() {
            let caps: Vec<(i64, Option<i32>)> = sqlx::query_as(
                "SELECT id, max_running FROM guilds WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            )
            .bind(&guilds)
            .fetch_all(&mut *tx)
            .await?;
            let running: HashMap<i64, i64> = sqlx::query_as(
                "SELECT guild_id, COUNT(*) FROM jobs \
                 WHERE guild_id = ANY($1) AND state = 'running' GROUP BY guild_id",
            )
            .bind(&guilds)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
            for (guild, max) in caps {
                let max = max.map_or(self.caps.running_per_guild, i64::from);
                guild_room.insert(guild, max - running.get(&guild).copied().unwrap_or(0));
            }
        }

        let mut outcomes: HashMap<Uuid, Start> = HashMap::new();
        let mut ids = Vec::new();
        let mut attempts = Vec::new();
        for (id, user, guild, attempt) in waiting {
            let running = user_running.entry(user).or_insert(0);
            let guild_full = guild.is_some_and(|g| guild_room.get(&g).is_some_and(|r| *r <= 0));
            if *running >= self.caps.running_per_user || guild_full {
                outcomes.insert(id, Start::Busy);
                continue;
            }
            *running += 1;
            if let Some(room) = guild.and_then(|g| guild_room.get_mut(&g)) {
                *room -= 1;
            }
            ids.push(id);
            attempts.push(attempt);
        }

        let started: Vec<(Uuid, i32, serde_json::Value)> = sqlx::query_as(
            "UPDATE jobs SET state = 'running', attempt = jobs.attempt + 1, worker_id = $3, \
                    lease_expires_at = now() + $4, running_at = now(), retry_at = NULL \
             FROM UNNEST($1::uuid[], $2::int4[]) AS held (id, attempt) \
             WHERE jobs.id = held.id AND jobs.state = 'queued' AND jobs.attempt = held.attempt \
             RETURNING jobs.id, jobs.attempt, jobs.spec",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(worker)
        .bind(lease)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;

        for (id, attempt, spec) in started {
            outcomes.insert(id, Start::Started { attempt, spec });
        }
        Ok(job_ids
            .iter()
            .map(|id| (*id, outcomes.remove(id).unwrap_or(Start::Gone)))
            .collect())
    }
}
