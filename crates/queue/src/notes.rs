//! Notes the gateway keeps about a job while it lives: where to show its progress and
//! result. They live in Redis beside the dispatch entries, so a gateway that restarts
//! still knows where each job's result goes. The dispatcher does not read them: to it a
//! note is opaque text.

use std::time::Duration;

use redis::AsyncCommands;
use uuid::Uuid;

use crate::{DispatchError, Dispatcher};

impl Dispatcher {
    fn note_key(&self, job_id: Uuid) -> String {
        format!("{}:note:{job_id}", self.config.prefix)
    }

    /// Stores `note` for the job, replacing any earlier one; it expires after `ttl`.
    pub async fn put_note(
        &self,
        job_id: Uuid,
        note: &str,
        ttl: Duration,
    ) -> Result<(), DispatchError> {
        let _: () = self
            .redis
            .clone()
            .set_ex(self.note_key(job_id), note, ttl.as_secs().max(1))
            .await?;
        Ok(())
    }

    /// The job's note, if one was stored and has not expired.
    pub async fn note(&self, job_id: Uuid) -> Result<Option<String>, DispatchError> {
        Ok(self.redis.clone().get(self.note_key(job_id)).await?)
    }

    /// Drops the job's note once its result was shown.
    pub async fn drop_note(&self, job_id: Uuid) -> Result<(), DispatchError> {
        let _: () = self.redis.clone().del(self.note_key(job_id)).await?;
        Ok(())
    }
}
