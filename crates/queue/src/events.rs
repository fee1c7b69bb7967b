//! Events from workers to the gateway: progress and results, on two Redis streams.
//!
//! Progress goes on `P:events:progress`, capped at about [`PROGRESS_KEPT`] entries: under
//! load the oldest are trimmed unread, which is fine, since a newer one supersedes them.
//! Results go on `P:events:results`, which is never trimmed: a consumer group reads them and
//! each entry is deleted only once acknowledged, so a gateway that restarts re-reads what it
//! had not finished.

use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tracing::warn;
use uuid::Uuid;

use crate::{DispatchError, Dispatcher};

/// Progress entries the stream keeps; older ones are trimmed.
pub const PROGRESS_KEPT: usize = 1000;

/// Where a running job is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub job_id: Uuid,
    /// Steps done, from 1.
    pub step: u32,
    /// Steps this render runs.
    pub steps: u32,
    /// Estimated time left until the result, from the steps so far.
    pub eta_ms: u64,
    /// A small preview of the grid (JPEG), when one could be made.
    #[serde(skip)]
    pub preview: Option<Vec<u8>>,
}

/// How a job ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Succeeded,
    Failed,
}

/// One image of a finished job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultImage {
    pub index: i16,
    pub blob_key: String,
    pub width: i32,
    pub height: i32,
    pub seed: i64,
}

/// The end of a job, for the gateway to show.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub job_id: Uuid,
    pub user_id: i64,
    pub outcome: Outcome,
    /// Why it failed, in words for the user.
    pub error: Option<String>,
    /// The grid, for jobs that make one.
    pub grid_key: Option<String>,
    pub images: Vec<ResultImage>,
    /// The prompt as rendered.
    pub prompt: String,
    /// GPU time charged to the fast quota.
    pub cost_ms: i64,
}

/// Reads the event streams on a Redis connection of its own. Its reads wait on Redis
/// (`BLOCK`), and Redis answers nothing else on a connection while a read waits, so on the
/// dispatcher's shared connection they would hold up every submit and note behind them.
/// Each reading loop keeps one.
pub struct EventReader {
    redis: ConnectionManager,
    prefix: String,
}

/// A result read from the stream; acknowledge it with [`Dispatcher::ack_result`] once shown.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub entry_id: String,
    pub result: JobResult,
}

fn stream_key(prefix: &str, name: &str) -> String {
    format!("{prefix}:events:{name}")
}

impl Dispatcher {
    fn stream(&self, name: &str) -> String {
        stream_key(&self.config.prefix, name)
    }

    /// Opens a connection for reading events; see [`EventReader`].
    pub async fn event_reader(&self) -> Result<EventReader, DispatchError> {
        Ok(EventReader {
            redis: crate::dispatch::connect_manager(&self.client).await?,
            prefix: self.config.prefix.clone(),
        })
    }

    /// Publishes a progress event; it may be trimmed before anyone reads it.
    pub async fn publish_progress(&self, progress: &Progress) -> Result<(), DispatchError> {
        let meta = serde_json::to_string(progress).map_err(encode_error)?;
        let mut command = redis::cmd("XADD");
        command
            .arg(self.stream("progress"))
            .arg("MAXLEN")
            .arg("~")
            .arg(PROGRESS_KEPT)
            .arg("*")
            .arg("meta")
            .arg(meta);
        if let Some(preview) = &progress.preview {
            command.arg("preview").arg(preview.as_slice());
        }
        let _: String = command.query_async(&mut self.redis.clone()).await?;
        Ok(())
    }

    /// Publishes a result. Retries for about a minute when Redis is away, because the job
    /// has already ended in Postgres and the user must hear of it.
    pub async fn publish_result(&self, result: &JobResult) -> Result<(), DispatchError> {
        let meta = serde_json::to_string(result).map_err(encode_error)?;
        let mut delay = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            let added: Result<String, _> = self
                .redis
                .clone()
                .xadd(self.stream("results"), "*", &[("meta", meta.as_str())])
                .await;
            match added {
                Ok(_) => return Ok(()),
                Err(error) if tries < 10 => {
                    warn!(job = %result.job_id, %error, "result not published yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                    tries += 1;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Acknowledges and deletes a result the gateway has shown.
    pub async fn ack_result(&self, group: &str, entry_id: &str) -> Result<(), DispatchError> {
        let stream = self.stream("results");
        let mut redis = self.redis.clone();
        let _: i64 = redis.xack(&stream, group, &[entry_id]).await?;
        let _: i64 = redis.xdel(&stream, &[entry_id]).await?;
        Ok(())
    }
}

impl EventReader {
    /// Reads up to `count` results for `consumer` of `group`, waiting up to `block` for one.
    /// Results a consumer read but did not acknowledge are read again first, so a restart
    /// loses none. The group is created on first use.
    pub async fn read_results(
        &mut self,
        group: &str,
        consumer: &str,
        count: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, DispatchError> {
        let stream = stream_key(&self.prefix, "results");
        let redis = &mut self.redis;
        let created: Result<(), _> = redis.xgroup_create_mkstream(&stream, group, "0").await;
        if let Err(error) = created {
            if error.code() != Some("BUSYGROUP") {
                return Err(error.into());
            }
        }

        let mut deliveries = Vec::new();
        for start in ["0", ">"] {
            let mut options = StreamReadOptions::default()
                .group(group, consumer)
                .count(count);
            if start == ">" {
                options = options.block(block.as_millis() as usize);
            }
            let reply: Option<StreamReadReply> =
                redis.xread_options(&[&stream], &[start], &options).await?;
            for key in reply.map(|r| r.keys).unwrap_or_default() {
                for entry in key.ids {
                    let meta: Option<String> = entry.get("meta");
                    match meta.and_then(|m| serde_json::from_str(&m).ok()) {
                        Some(result) => deliveries.push(Delivery {
                            entry_id: entry.id,
                            result,
                        }),
                        None => {
                            warn!(entry = %entry.id, "unreadable result event dropped");
                            let _: Result<i64, _> = redis.xack(&stream, group, &[&entry.id]).await;
                            let _: Result<i64, _> = redis.xdel(&stream, &[&entry.id]).await;
                        }
                    }
                }
            }
            if !deliveries.is_empty() {
                break;
            }
        }
        Ok(deliveries)
    }

    /// Progress events after `after` (`"0"` for all kept, `"$"` for only new ones), waiting
    /// up to `block`. Returns them with the id to pass next time.
    pub async fn read_progress(
        &mut self,
        after: &str,
        count: usize,
        block: Duration,
    ) -> Result<(Vec<Progress>, String), DispatchError> {
        let options = StreamReadOptions::default()
            .count(count)
            .block(block.as_millis() as usize);
        let reply: Option<StreamReadReply> = self
            .redis
            .xread_options(&[stream_key(&self.prefix, "progress")], &[after], &options)
            .await?;
        let mut last = after.to_string();
        let mut events = Vec::new();
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for entry in key.ids {
                last = entry.id.clone();
                let meta: Option<String> = entry.get("meta");
                if let Some(mut progress) =
                    meta.and_then(|m| serde_json::from_str::<Progress>(&m).ok())
                {
                    progress.preview = entry.get("preview");
                    events.push(progress);
                }
            }
        }
        Ok((events, last))
    }
}

fn encode_error(error: serde_json::Error) -> DispatchError {
    DispatchError::Redis(redis::RedisError::from((
        redis::ErrorKind::TypeError,
        "event not encodable",
        error.to_string(),
    )))
}
