//! A loopback Discord for end-to-end tests of the bot.
//!
//! [`Loopback::start`] serves Discord's REST API (v10) over HTTPS and its
//! gateway websocket over plain HTTP, both on 127.0.0.1 with ephemeral ports,
//! so an unmodified serenity 0.12.5 bot can run against it. The bot reaches
//! the fake through [`Loopback::http_client`]: a reqwest client that resolves
//! `discord.com` to the fake, trusts only the certificate made for this run,
//! and resolves no other name, so nothing ever leaves the machine.
//!
//! # The model
//!
//! The fake plays Discord and its users at once. The test is the user: it
//! types a slash command ([`Loopback::slash`]), clicks a button
//! ([`Loopback::click`]), chooses in a select menu ([`Loopback::select`]) or
//! types into an autocompleted option ([`Loopback::autocomplete`]); each
//! becomes an INTERACTION_CREATE on the bot's newest ready gateway session.
//! The bot answers over REST, and the fake keeps what Discord would keep:
//! messages with their content, embeds, components and files (ephemeral ones
//! too, so their menus can be used), and every request with the answer it
//! got. The test then waits for the state it expects with
//! [`Loopback::wait_for`], which re-checks on every change and, on timeout,
//! panics with a dump of recent requests and messages.
//!
//! # Rules enforced
//!
//! - The bot token on every route except interaction callbacks and
//!   webhooks (401 otherwise).
//! - The first callback within 3 s of dispatch (404, 10062), only one
//!   callback (400, 40060), `@original` only after an answer (404, 10008),
//!   webhook routes only within the token lifetime (401, 50027).
//! - Message bodies: content ≤ 2000 characters, ≤ 10 embeds within
//!   Discord's text limits, ≤ 5 action rows of ≤ 5 buttons, custom ids
//!   present, unique and ≤ 100 characters, labels ≤ 80 (400, 50035 with the
//!   field named); no empty messages (400, 50006).
//! - Uploads: ≤ 10 files whose sizes add up to at most the attachment limit
//!   (413, 40005).
//! - Injected 429s ([`Loopback::inject_rate_limit`]) with the headers and
//!   body serenity's ratelimiter reads; every other answer carries rate-limit
//!   headers of a bucket that never runs dry.
//!
//! Unknown routes get a 404 and are recorded, so a wrong call shows up in
//! [`Loopback::requests`].
//!
//! # Example
//!
//! ```no_run
//! # async fn run() {
//! use huaxian_discord_loopback::{Loopback, Slash, User};
//!
//! let discord = Loopback::start().await;
//! // Build the bot with `discord.http_client()` and `discord.bot_token()`, start it, then:
//! let user = User::new(42, "alice");
//! let slash = Slash::new(user, Some(7), 8, "imagine")
//!     .options(serde_json::json!([{"name": "prompt", "type": 3, "value": "a cat"}]));
//! let interaction = discord.slash(slash).await;
//! let done = discord
//!     .wait_for(std::time::Duration::from_secs(5), "the grid", |state| {
//!         let message = state.original(interaction.id)?;
//!         (!message.attachments.is_empty()).then(|| message.clone())
//!     })
//!     .await;
//! assert_eq!(done.channel_id, 8);
//! # }
//! ```

mod body;
mod driver;
mod gateway;
mod interactions;
mod messages;
mod payloads;
mod rest;
mod rules;
mod state;
mod tls;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use driver::{Interaction, Slash, User};
pub use state::{Attachment, InteractionState, Message, Request, State};

use state::{Injection, Shared, World};

/// The id the fake uses for both the application and the bot user, as Discord does.
const APPLICATION_ID: u64 = 1_190_000_000_000_000_001;

/// A running loopback Discord; clones share it, the last one stops the servers.
#[derive(Clone)]
pub struct Loopback {
    shared: Arc<Shared>,
    client: reqwest::Client,
    _servers: Arc<Servers>,
}

/// Aborts the listener tasks when the last handle goes away.
struct Servers(Vec<JoinHandle<()>>);

impl Drop for Servers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Loopback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loopback")
            .field("rest", &self.shared.rest_addr)
            .field("gateway", &self.shared.plain_addr)
            .finish()
    }
}

impl Loopback {
    /// Starts the HTTPS REST server and the plain websocket gateway on 127.0.0.1.
    ///
    /// Panics if it cannot bind a port on 127.0.0.1, which leaves a test
    /// nothing to run against anyway.
    pub async fn start() -> Loopback {
        let rest = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the REST port");
        let plain = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the gateway port");
        let rest_addr = rest.local_addr().expect("REST port address");
        let plain_addr = plain.local_addr().expect("gateway port address");
        let identity = tls::make_identity();
        let acceptor = tls::acceptor(&identity);

        let mut seed = state::World::default();
        let secret = seed.next_secret();
        // Shaped like a real token (id.timestamp.hmac) so serenity's validator accepts it.
        let token = format!("MTE5MDAwMDAwMDAwMDAwMDAwMQ.Gloop0.{}", &secret[..38]);
        let shared = Arc::new(Shared::new(
            token,
            APPLICATION_ID,
            APPLICATION_ID,
            rest_addr,
            plain_addr,
            identity.cert_der,
        ));

        let servers = vec![
            tokio::spawn(rest::serve(rest, acceptor, Arc::clone(&shared))),
            tokio::spawn(gateway::serve(plain, Arc::clone(&shared))),
        ];
        let client = tls::client(rest_addr, &shared.cert_der);
        tracing::debug!(%rest_addr, %plain_addr, "loopback Discord started");
        Loopback {
            shared,
            client,
            _servers: Arc::new(Servers(servers)),
        }
    }

    /// A reqwest 0.12 client that reaches this fake as `https://discord.com` and trusts its certificate.
    pub fn http_client(&self) -> reqwest::Client {
        self.client.clone()
    }

    /// The bot token the fake accepts; any other gets 401 (REST) or close code 4004 (gateway).
    pub fn bot_token(&self) -> &str {
        &self.shared.token
    }

    /// The application id (the bot's `application_id`).
    pub fn application_id(&self) -> u64 {
        self.shared.application_id
    }

    /// The bot user's id, the author of every message the bot sends.
    pub fn bot_user_id(&self) -> u64 {
        self.shared.bot_user_id
    }

    /// The gateway URL (`ws://127.0.0.1:PORT/`) that `GET /gateway` hands out.
    pub fn gateway_url(&self) -> String {
        self.shared.gateway_url()
    }

    /// The address of the HTTPS listener that plays `discord.com`.
    pub fn rest_addr(&self) -> std::net::SocketAddr {
        self.shared.rest_addr
    }

    /// The URL at which the fake serves an uploaded file.
    pub fn file_url(&self, attachment_id: u64) -> String {
        format!("{}/{attachment_id}/file", self.shared.files_base())
    }

    /// Sets the interaction-token age after which webhook routes answer 401 code 50027 (default 15 min).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.shared.write(|w| w.settings.token_lifetime = lifetime);
    }

    /// Sets the upload limit sent as `attachment_size_limit`; larger uploads get 413 code 40005 (default 10 MiB).
    pub fn set_attachment_limit(&self, bytes: u64) {
        self.shared.write(|w| w.settings.attachment_limit = bytes);
    }

    /// Sets how long after dispatch the first callback is accepted (default 3 s, Discord's).
    pub fn set_response_deadline(&self, deadline: Duration) {
        self.shared
            .write(|w| w.settings.response_deadline = deadline);
    }

    /// Makes the next `times` requests whose `"METHOD /path"` starts with `route_prefix` get a 429.
    ///
    /// The path is as the bot sent it, without `/api/v10`, so
    /// `"PATCH /webhooks/"` catches every webhook edit. The answer carries
    /// `Retry-After` and the `X-RateLimit-*` headers (`X-RateLimit-Global`
    /// when `global`) and Discord's body `{message, retry_after, global}`.
    pub fn inject_rate_limit(
        &self,
        route_prefix: &str,
        times: u32,
        retry_after: Duration,
        global: bool,
    ) {
        let injection = Injection {
            prefix: route_prefix.to_owned(),
            times,
            retry_after,
            global,
        };
        self.shared.write(|w| w.injections.push(injection));
    }

    /// Closes every gateway session with `code`, as a dropped connection would.
    pub fn close_sessions(&self, code: u16) {
        self.shared.write(|w| gateway::close_all(w, code));
    }

    /// Whether a gateway session has received READY and is still connected.
    pub fn has_ready_session(&self) -> bool {
        self.shared.read(gateway::has_live_session)
    }

    /// How many connected gateway sessions have received READY.
    pub fn ready_sessions(&self) -> usize {
        self.shared.read(|w| {
            w.sessions
                .iter()
                .filter(|s| s.ready && !s.tx.is_closed())
                .count()
        })
    }

    /// Waits until `probe` returns `Some`, re-checking on every change of the fake's state.
    ///
    /// `probe` runs under the fake's lock: it must not call back into the
    /// `Loopback`. On timeout this panics with `what` and a dump of recent
    /// requests, messages and interactions.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        what: &str,
        probe: impl Fn(&State) -> Option<T>,
    ) -> T {
        self.wait_world(timeout, what, |w| probe(&w.state)).await
    }

    /// `wait_for` over the whole world, sessions and settings included.
    async fn wait_world<T>(
        &self,
        timeout: Duration,
        what: &str,
        probe: impl Fn(&World) -> Option<T>,
    ) -> T {
        let mut changes = self.shared.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.borrow_and_update();
            if let Some(found) = self.shared.read(&probe) {
                return found;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => break,
            }
        }
        if let Some(found) = self.shared.read(&probe) {
            return found;
        }
        panic!(
            "timed out after {timeout:?} waiting for {what}\n{}",
            self.dump()
        );
    }

    /// Runs `f` on the current state.
    pub fn with_state<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        self.shared.read(|w| f(&w.state))
    }

    /// Every REST request in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.with_state(|s| s.requests.clone())
    }

    /// The message with this id in its current state, unless deleted.
    pub fn message(&self, id: u64) -> Option<Message> {
        self.with_state(|s| s.message(id).cloned())
    }

    /// The messages of a channel in creation order, ephemeral ones included.
    pub fn messages(&self, channel_id: u64) -> Vec<Message> {
        self.with_state(|s| s.messages(channel_id).into_iter().cloned().collect())
    }

    /// Registered commands: global ones without `guild_id`, guild ones with it.
    pub fn commands(&self) -> Vec<serde_json::Value> {
        self.with_state(State::commands)
    }

    /// A readable account of recent requests, messages and interactions.
    pub fn dump(&self) -> String {
        self.with_state(|state| {
            let mut out = String::from("recent requests:\n");
            let skip = state.requests.len().saturating_sub(30);
            for r in &state.requests[skip..] {
                let _ = write!(out, "  {} {}", r.status, r.route());
                if let Some(code) = r.code {
                    let _ = write!(out, " code {code}");
                }
                if !r.files.is_empty() {
                    let files: Vec<&str> = r.files.iter().map(|f| f.filename.as_str()).collect();
                    let _ = write!(out, " files {files:?}");
                }
                if !r.body.is_null() {
                    let _ = write!(out, " {}", clip(&r.body.to_string(), 300));
                }
                out.push('\n');
            }
            out.push_str("messages:\n");
            for m in state.messages.values() {
                let files: Vec<&str> = m.attachments.iter().map(|a| a.filename.as_str()).collect();
                let _ = writeln!(
                    out,
                    "  {} in {} flags {} edits {} {:?} buttons {:?} files {files:?}",
                    m.id,
                    m.channel_id,
                    m.flags,
                    m.edits,
                    clip(&m.content, 120),
                    m.custom_ids(),
                );
            }
            out.push_str("interactions:\n");
            for i in state.interactions.values() {
                let _ = writeln!(
                    out,
                    "  {} type {} answered {:?} original {:?} follow-ups {:?}",
                    i.id, i.kind, i.response_type, i.original, i.followups,
                );
            }
            out
        })
    }
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let cut: String = text.chars().take(max).collect();
    format!("{cut}…")
}
