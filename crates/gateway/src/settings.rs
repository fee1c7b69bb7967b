//! The gateway's configuration: `[discord]` and `[gateway]` beside the shared `[database]`,
//! `[redis]`, `[blob]`, `[caps]` and `[prompt]` sections of the service's TOML file.

use std::net::SocketAddr;
use std::time::Duration;

use huaxian_prompt::Limits;
pub use huaxian_service::BlobSettings;
use huaxian_service::{CapsSettings, DatabaseSettings, RedisSettings, Secret};
use serde::{Deserialize, Serialize};

/// Everything `huaxian gateway` reads.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    #[serde(default)]
    pub blob: BlobSettings,
    #[serde(default)]
    pub caps: CapsSettings,
    /// What `/imagine` accepts: models, samplers, steps, sizes.
    #[serde(default)]
    pub prompt: Limits,
    pub discord: DiscordSettings,
    #[serde(default)]
    pub gateway: GatewaySettings,
}

/// `[discord]`: the bot and who may run `/admin`.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DiscordSettings {
    /// The bot token (Developer Portal → Bot → Token). Never logged.
    pub token: Secret,
    /// Register the commands in this guild only (instant, for development); without it they
    /// are registered globally.
    #[serde(default)]
    pub guild_id: Option<u64>,
    /// Users who may run `/admin` anywhere.
    #[serde(default)]
    pub admin_users: Vec<u64>,
    /// Roles whose members may run `/admin` in their guild.
    #[serde(default)]
    pub admin_roles: Vec<u64>,
    /// Hosts image attachments are downloaded from; nothing else is fetched.
    #[serde(default = "default_attachment_hosts")]
    pub attachment_hosts: Vec<String>,
    /// The shards this process runs, for bots in enough guilds to need several gateway
    /// processes; without it, the process runs every shard Discord recommends.
    #[serde(default)]
    pub shards: Option<ShardSettings>,
}

/// `[discord.shards]`: a range of the bot's shards.
#[derive(Clone, Copy, Debug, Deserialize, Serialize)]
pub struct ShardSettings {
    /// First shard this process runs.
    pub first: u32,
    /// Last shard this process runs (inclusive).
    pub last: u32,
    /// Shards of the whole bot.
    pub total: u32,
}

impl ShardSettings {
    /// Checks the range; the message says what to change.
    pub fn check(&self) -> Result<(), String> {
        if self.total == 0 || self.first > self.last || self.last >= self.total {
            return Err(format!(
                "[discord.shards] first = {}, last = {}, total = {}: need first ≤ last < total",
                self.first, self.last, self.total
            ));
        }
        Ok(())
    }
}

/// `[gateway]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct GatewaySettings {
    /// Where to serve `/metrics`, `/healthz` and `/readyz`; none when absent.
    pub metrics_addr: Option<SocketAddr>,
    /// Least seconds between two progress edits of one message (Discord rate-limits edits).
    pub progress_edit_s: f64,
    /// Seconds an interaction token is used for; past it, results go out as channel
    /// messages. Discord's tokens last 15 minutes; the default leaves a margin.
    pub token_lifetime_s: f64,
    /// Name of this gateway among the readers of the result stream; defaults to the host
    /// name. Each replica needs its own.
    pub consumer: Option<String>,
    /// Estimated fast-lane GPU milliseconds per step per megapixel per image, reserved
    /// from the user's quota when a job is queued and settled to the real time after.
    pub ms_per_megapixel_step: f64,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            metrics_addr: None,
            progress_edit_s: 3.0,
            token_lifetime_s: 14.0 * 60.0,
            consumer: None,
            ms_per_megapixel_step: 200.0,
        }
    }
}

impl GatewaySettings {
    /// This process's name among the gateways: [`GatewaySettings::consumer`], else the
    /// host name.
    pub fn consumer_name(&self) -> String {
        self.consumer
            .clone()
            .filter(|name| !name.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "gateway".into())
    }

    /// [`GatewaySettings::progress_edit_s`] as a duration, never below half a second.
    pub fn progress_every(&self) -> Duration {
        Duration::from_secs_f64(self.progress_edit_s.clamp(0.5, 3600.0))
    }

    /// [`GatewaySettings::token_lifetime_s`] as a duration, within Discord's 15 minutes.
    pub fn token_lifetime(&self) -> Duration {
        Duration::from_secs_f64(self.token_lifetime_s.clamp(0.0, 15.0 * 60.0))
    }
}

fn default_attachment_hosts() -> Vec<String> {
    vec!["cdn.discordapp.com".into(), "media.discordapp.net".into()]
}
