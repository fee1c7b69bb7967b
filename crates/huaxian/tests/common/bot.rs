//! The gateway under test: a loopback Discord, the gateway in this process on the test's
//! deployment, and helpers to talk to it as users do and to read what they would see.

use std::path::PathBuf;
use std::time::Duration;

use huaxian_discord_loopback::{Interaction, Loopback, Message, Slash, User};
use huaxian_gateway::{Gateway, Options, Settings};
use huaxian_store::{Job, Store};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::process::Child;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::Deployment;

pub const GUILD: u64 = 4_000_000_000_000_001;
pub const CHANNEL: u64 = 4_000_000_000_000_002;
pub const ADMIN: u64 = 4_000_000_000_000_099;

/// The model the fixture workers load.
pub const MODEL: &str = "tiny";

/// A model `/imagine` accepts by name that no fixture worker loads.
pub const UNLOADED_MODEL: &str = "sdxl";

/// Long enough for the tests to watch a job render and send progress.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Bot {
    pub deployment: Deployment,
    pub discord: Loopback,
    settings_path: PathBuf,
    /// Where the running gateway serves `/metrics`, `/healthz` and `/readyz`.
    pub metrics: Option<std::net::SocketAddr>,
    running: Option<(watch::Sender<bool>, JoinHandle<anyhow::Result<()>>)>,
}

impl Bot {
    pub async fn new(pool: PgPool) -> Self {
        // RUST_LOG=info shows the gateway's log with the test's output.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let deployment = Deployment::new(pool).await;
        let discord = Loopback::start().await;
        let settings_path = deployment.dir.path().join("gateway.toml");
        let text = format!(
            r#"
[database]
url = "{database}"
max_connections = 4

[redis]
url = "{redis}"
prefix = "{prefix}"

[blob]
url = "{blobs}"

[caps]
retry_backoff_s = 0

[prompt]
native_width = 64
native_height = 64
base_steps = 8
max_steps = 400
models = ["{MODEL}", "{UNLOADED_MODEL}"]
default_model = "{MODEL}"
default_sampler = "ddim"

[discord]
token = "{token}"
guild_id = {GUILD}
admin_users = [{ADMIN}]
attachment_hosts = ["127.0.0.1"]

[gateway]
metrics_addr = "127.0.0.1:0"
"#,
            database = deployment.database_url,
            redis = huaxian_testkit::redis_url(),
            prefix = deployment.prefix,
            blobs = deployment.blob_dir().display(),
            token = discord.bot_token(),
        );
        std::fs::write(&settings_path, text).unwrap();
        let mut bot = Self {
            deployment,
            discord,
            settings_path,
            metrics: None,
            running: None,
        };
        bot.start_gateway().await;
        bot
    }

    pub async fn start_gateway(&mut self) {
        let settings: Settings = huaxian_service::load(Some(&self.settings_path)).unwrap();
        let options = Options {
            discord_client: Some(self.discord.http_client()),
        };
        let gateway = Gateway::start(settings, options).await.unwrap();
        self.metrics = gateway.metrics_addr();
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(gateway.run(shutdown));
        self.running = Some((stop, task));
        // Ready once the commands are registered.
        self.discord
            .wait_for(WAIT, "command registration", |state| {
                (state.commands().len() >= 8).then_some(())
            })
            .await;
    }

    pub async fn stop_gateway(&mut self) {
        let (stop, task) = self.running.take().expect("gateway running");
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("gateway stops within 30 s")
            .unwrap()
            .unwrap();
    }

    /// `GET path` on the gateway's metrics endpoint: the status and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let addr = self.metrics.expect("a metrics endpoint");
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// Stops the gateway and removes the test's Redis keys.
    pub async fn finish(mut self) {
        self.stop_gateway().await;
        self.deployment.flush().await;
    }

    pub fn store(&self) -> &Store {
        self.deployment.dispatcher.store()
    }

    /// A `huaxian worker` on the fixture model.
    pub fn worker(&self) -> Child {
        self.deployment.worker("w-discord", 30.0, 30.0)
    }

    /// Waits until a worker has registered and heartbeats, so the gateway counts it live.
    pub async fn worker_live(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let live = self
                .store()
                .live_workers(chrono::Duration::seconds(30))
                .await
                .unwrap();
            if !live.is_empty() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("no worker came up\n{}", self.deployment.logs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs `/name` in the test guild's channel with Discord's options array.
    pub async fn slash(&self, user: &User, name: &str, options: Value) -> Interaction {
        let command = Slash::new(user.clone(), Some(GUILD), CHANNEL, name).options(options);
        self.discord.slash(command).await
    }

    pub async fn imagine(&self, user: &User, prompt: &str) -> Interaction {
        let options = json!([{ "name": "prompt", "type": 3, "value": prompt }]);
        self.slash(user, "imagine", options).await
    }

    /// Waits until the interaction's message shows a result: an image and buttons.
    pub async fn result(&self, interaction: &Interaction) -> Message {
        let id = interaction.id;
        self.discord
            .wait_for(WAIT, "a result message", |state| {
                let message = state.original(id)?;
                (!message.attachments.is_empty() && !message.components.is_empty())
                    .then(|| message.clone())
            })
            .await
    }

    /// Waits for the answer to an ephemerally deferred command: its response once edited.
    pub async fn answer(&self, interaction: &Interaction) -> Message {
        let id = interaction.id;
        let message = self
            .discord
            .wait_for(WAIT, "the private answer", |state| {
                state.original(id).filter(|m| !m.deferred).cloned()
            })
            .await;
        assert_ne!(message.flags & 64, 0, "answered privately: {message:?}");
        message
    }

    /// Waits for the ephemeral refusal of an interaction and returns its text.
    pub async fn refusal(&self, interaction: &Interaction) -> String {
        let id = interaction.id;
        self.discord
            .wait_for(WAIT, "an ephemeral refusal", |state| {
                let state_of = state.interaction(id)?;
                let ephemeral = |m: &Message| (m.flags & 64 != 0).then(|| m.content.clone());
                if let Some(data) = &state_of.response_data {
                    if state_of.response_type == Some(4)
                        && data["flags"].as_u64().unwrap_or(0) & 64 != 0
                    {
                        return data["content"].as_str().map(str::to_owned);
                    }
                }
                state_of
                    .followups
                    .iter()
                    .filter_map(|m| state.message(*m))
                    .find_map(ephemeral)
            })
            .await
    }

    pub async fn jobs(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM jobs")
            .fetch_one(self.store().pool())
            .await
            .unwrap()
    }

    /// Every job of `user`, oldest first.
    pub async fn jobs_of(&self, user: u64) -> Vec<Job> {
        let ids: Vec<Uuid> =
            sqlx::query_scalar("SELECT id FROM jobs WHERE user_id = $1 ORDER BY queued_at, part")
                .bind(user as i64)
                .fetch_all(self.store().pool())
                .await
                .unwrap();
        self.store().jobs(&ids).await.unwrap()
    }
}

pub fn user(id: u64) -> User {
    User::new(id, "ada")
}

/// The configured admin.
pub fn admin() -> User {
    User::new(ADMIN, "boss")
}

/// The job id a result's buttons carry.
pub fn job_of(message: &Message) -> Uuid {
    let id = message
        .custom_ids()
        .into_iter()
        .find_map(|id| huaxian_gateway::buttons::parse(&id))
        .expect("result buttons");
    id.1
}

pub fn custom_id(message: &Message, label_prefix: &str) -> String {
    message
        .components
        .iter()
        .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
        .find(|c| {
            let label = c["label"].as_str().unwrap_or_default();
            let emoji = c["emoji"]["name"].as_str().unwrap_or_default();
            label.starts_with(label_prefix) || emoji == label_prefix
        })
        .and_then(|c| c["custom_id"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no {label_prefix} button on {message:?}"))
}

/// The select menu with this `custom_id` on the message, as the bot sent it.
pub fn menu(message: &Message, custom_id: &str) -> Value {
    message
        .components
        .iter()
        .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
        .find(|c| c["type"] == 3 && c["custom_id"] == custom_id)
        .unwrap_or_else(|| panic!("no menu {custom_id:?} on {message:?}"))
}

pub fn decoded(message: &Message) -> image::DynamicImage {
    let attachment = message.attachments.first().expect("an attachment");
    image::load_from_memory(&attachment.bytes).expect("a decodable image")
}

/// A PNG of `width`×`height` in a smooth gradient, as a user would attach.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 128])
    });
    let mut bytes = Vec::new();
    image
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    bytes
}
