//! The Discord gateway, `huaxian gateway`: the bot people meet. It runs serenity over
//! Discord's gateway, turns slash commands and button clicks into jobs, and shows each
//! job's progress and result.
//!
//! The model it follows:
//! - **Acknowledge first.** Every interaction is answered with a deferred response before
//!   anything slow (Postgres, Redis, downloads) happens, so Discord's 3-second window is
//!   never at risk; the real answer then edits that response. Refusals delete it and answer
//!   with an ephemeral follow-up only the user sees.
//! - **Stateless buttons.** A button's `custom_id` carries the job and the action
//!   ([`buttons`]), so buttons work on old messages and after restarts.
//! - **Notes, not memory.** Where a job's progress and result go (the interaction token, the
//!   message) is written to Redis beside the job ([`note::Note`]); the results stream is read
//!   with a consumer group. A gateway that restarts mid-job still delivers the result, once.
//! - **Tokens expire.** Interaction tokens live 15 minutes. A result that ends later, or
//!   whose token Discord refuses, is posted as a channel message with the bot token,
//!   replying to the original.
//!
//! The gateway never touches tensors and writes no SQL: jobs go through `huaxian-queue`,
//! everything else through `huaxian-store`.

mod admin;
pub mod buttons;
pub mod command;
mod commands;
mod deliver;
pub mod fit;
mod handler;
mod inputs;
mod manage;
pub mod metrics;
mod note;
mod reply;
pub mod settings;
mod submit;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use huaxian_queue::{Config, Dispatcher};
use huaxian_service::{BlobStore, Health};
use serenity::all::{GatewayIntents, HttpBuilder};
use serenity::http::Http;
use tokio::sync::watch;
use tracing::{info, warn};

pub use metrics::Metrics;
pub use settings::Settings;

/// What the gateway shares between its handlers and background tasks.
pub(crate) struct App {
    pub settings: Settings,
    pub dispatcher: Dispatcher,
    pub blobs: BlobStore,
    pub metrics: Metrics,
    /// Downloads image attachments; follows no redirects.
    pub fetcher: reqwest::Client,
    /// Set once Discord has sent READY on this connection.
    pub ready: AtomicBool,
    /// Set once the commands were registered by this process.
    pub registered: AtomicBool,
    /// Which job messages are being edited, and which show their result.
    pub editing: deliver::Editing,
}

/// Test and embedding hooks.
#[derive(Clone, Default)]
pub struct Options {
    /// The HTTP client serenity talks to Discord with; tests pass one that reaches a local
    /// fake. `None`: serenity's default.
    pub discord_client: Option<reqwest::Client>,
}

/// A connected gateway, ready to [`Gateway::run`].
pub struct Gateway {
    app: Arc<App>,
    client: serenity::Client,
    /// The metrics endpoint, serving from [`Gateway::start`] on.
    endpoint: Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>,
}

impl Gateway {
    /// Connects to Postgres, Redis and the blob store, and prepares the Discord client.
    /// Errors name the setting to fix.
    pub async fn start(settings: Settings, options: Options) -> anyhow::Result<Self> {
        let token = settings.discord.token.reveal().context("[discord] token")?;
        if token.trim().is_empty() {
            anyhow::bail!(
                "[discord] token is empty: set it to the bot token from the Developer Portal \
                 (or HUAXIAN__DISCORD__TOKEN)"
            );
        }
        if let Some(shards) = &settings.discord.shards {
            shards.check().map_err(anyhow::Error::msg)?;
        }
        let store = settings.database.connect(settings.caps.caps()).await?;
        let redis_url = settings.redis.url.reveal().context("[redis] url")?;
        let config = Config {
            prefix: settings.redis.prefix.clone(),
            ..Config::default()
        };
        let dispatcher = Dispatcher::connect(store, &redis_url, config)
            .await
            .context("connecting to Redis ([redis] url)")?;
        let blobs = BlobStore::open(&settings.blob.url).context("[blob] url")?;
        let fetcher = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the attachment downloader")?;

        let mut http = HttpBuilder::new(&token);
        if let Some(client) = options.discord_client {
            http = http.client(client);
        }
        let app = Arc::new(App {
            settings,
            dispatcher,
            blobs,
            metrics: Metrics::new(),
            fetcher,
            ready: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            editing: deliver::Editing::default(),
        });
        // Slash commands and buttons arrive as interactions, which need no intents at all.
        let client =
            serenity::all::ClientBuilder::new_with_http(http.build(), GatewayIntents::empty())
                .event_handler(handler::Handler { app: app.clone() })
                .await
                .context("building the Discord client")?;
        let endpoint = match app.settings.gateway.metrics_addr {
            Some(addr) => {
                let ready = app.clone();
                let health: Health = Arc::new(move || {
                    if ready.ready.load(Ordering::Relaxed) {
                        Ok(())
                    } else {
                        Err("not connected to Discord".into())
                    }
                });
                let (bound, server) =
                    huaxian_service::serve(addr, app.metrics.registry.clone(), health)
                        .await
                        .with_context(|| {
                            format!("serving metrics on {addr} ([gateway] metrics_addr)")
                        })?;
                info!(%bound, "metrics and health endpoint up");
                Some((bound, server))
            }
            None => None,
        };
        Ok(Self {
            app,
            client,
            endpoint,
        })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, when configured.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.as_ref().map(|(addr, _)| *addr)
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.app.metrics
    }

    /// Serves Discord until `shutdown` turns true: the gateway connection, result delivery,
    /// progress edits, queue gauges and the metrics endpoint.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let app = self.app.clone();
        let http: Arc<Http> = self.client.http.clone();
        let mut tasks = tokio::task::JoinSet::new();

        if let Some((_, server)) = self.endpoint.take() {
            let mut stop = shutdown.clone();
            tasks.spawn(async move {
                let _ = stop.wait_for(|stop| *stop).await;
                server.abort();
            });
        }
        tasks.spawn(deliver::results(
            app.clone(),
            http.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(deliver::progress(
            app.clone(),
            http.clone(),
            shutdown.clone(),
        ));
        tasks.spawn(manage::sample_queue(app.clone(), shutdown.clone()));

        let shards = self.client.shard_manager.clone();
        let range = app.settings.discord.shards;
        let connect = async {
            match range {
                // serenity's range end is the last shard, inclusive.
                Some(range) => {
                    self.client
                        .start_shard_range(range.first..range.last, range.total)
                        .await
                }
                None => self.client.start_autosharded().await,
            }
        };
        let outcome = tokio::select! {
            started = connect => started.context("the Discord connection failed"),
            _ = shutdown.wait_for(|stop| *stop) => Ok(()),
        };
        info!("gateway stopping");
        shards.shutdown_all().await;
        app.ready.store(false, Ordering::Relaxed);
        // Delivery stops between two results on its own; what is still in hand after that
        // is re-read from the stream by the next start.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        if let Err(error) = &outcome {
            warn!(%error, "gateway stopped with an error");
        }
        outcome
    }
}
