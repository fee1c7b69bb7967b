//! What the fake remembers: the public read-only view ([`State`]) and the
//! private bookkeeping around it (settings, gateway sessions, id source).
//!
//! Everything lives behind one mutex in [`Shared`]. Every change bumps a
//! `watch` counter, so `Loopback::wait_for` can re-check its probe on each
//! change instead of polling.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::{mpsc, watch};

/// Discord's snowflake epoch (2015-01-01), in milliseconds since the Unix epoch.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// A file attached to a message or sent in a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The attachment id; in [`Request::files`] the `n` of the `files[n]` form field.
    pub id: u64,
    /// The file name as Discord shows it.
    pub filename: String,
    /// The file's content.
    pub bytes: Vec<u8>,
}

/// A message as the fake stores it, in its current state.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The message id (a snowflake).
    pub id: u64,
    /// The channel the message is in.
    pub channel_id: u64,
    /// The message text.
    pub content: String,
    /// The embeds, as the bot sent them.
    pub embeds: Vec<Value>,
    /// The action rows, as the bot sent them.
    pub components: Vec<Value>,
    /// The attached files.
    pub attachments: Vec<Attachment>,
    /// Discord's message flags; 64 is ephemeral.
    pub flags: u64,
    /// `message_reference.message_id` when the message is a reply.
    pub reference: Option<u64>,
    /// The interaction whose response or follow-up this message is.
    pub interaction_id: Option<u64>,
    /// How many times the message was edited.
    pub edits: u32,
    /// Whether the message came through an interaction webhook.
    pub by_webhook: bool,
    /// Whether the message is a deferred placeholder that was not edited yet.
    pub deferred: bool,
    /// When the message was created, RFC 3339.
    pub timestamp: String,
    /// When the message was last edited, RFC 3339.
    pub edited_timestamp: Option<String>,
}

impl Message {
    /// The `custom_id`s of all components, row by row.
    pub fn custom_ids(&self) -> Vec<String> {
        self.components
            .iter()
            .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["custom_id"].as_str().map(str::to_owned))
            .collect()
    }
}

/// One REST request the bot made, with the answer it got.
#[derive(Clone, Debug)]
pub struct Request {
    /// The HTTP method, upper case.
    pub method: String,
    /// The path without `/api/v10` and without the query, ids as sent.
    pub path: String,
    /// The HTTP status the fake answered.
    pub status: u16,
    /// The Discord JSON error code returned, if any.
    pub code: Option<u64>,
    /// The JSON body, or a multipart request's `payload_json`; `Null` when empty.
    pub body: Value,
    /// The uploaded files of a multipart request.
    pub files: Vec<Attachment>,
    /// When the request arrived.
    pub at: Instant,
    /// The `retry_after` of an injected 429, in seconds.
    pub retry_after: Option<f64>,
}

impl Request {
    /// The request as `"METHOD /path"`, the form route prefixes match against.
    pub fn route(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// An interaction the fake dispatched and what the bot did with it.
#[derive(Clone, Debug)]
pub struct InteractionState {
    /// The interaction id.
    pub id: u64,
    /// The interaction token.
    pub token: String,
    /// Discord's interaction type: 2 command, 3 component, 4 autocomplete.
    pub kind: u8,
    /// The channel the interaction happened in.
    pub channel_id: u64,
    /// The guild, or `None` in a DM.
    pub guild_id: Option<u64>,
    /// The user who triggered it.
    pub user_id: u64,
    /// When the fake sent it to the bot.
    pub dispatched_at: Instant,
    /// The callback type the bot answered with, once it did.
    pub response_type: Option<u8>,
    /// The `data` of the accepted callback (choices, modal, message body).
    pub response_data: Option<Value>,
    /// The message `@original` refers to, once there is one.
    pub original: Option<u64>,
    /// For components: the message whose button was clicked.
    pub component_message: Option<u64>,
    /// Follow-up messages, in order.
    pub followups: Vec<u64>,
}

/// A read-only view of everything the fake recorded.
#[derive(Debug, Default)]
pub struct State {
    pub(crate) requests: Vec<Request>,
    pub(crate) messages: BTreeMap<u64, Message>,
    pub(crate) interactions: BTreeMap<u64, InteractionState>,
    pub(crate) global_commands: Vec<Value>,
    pub(crate) guild_commands: BTreeMap<u64, Vec<Value>>,
    /// Every uploaded file by attachment id, served on the plain listener.
    pub(crate) files: HashMap<u64, Attachment>,
    /// The guild each channel belongs to, learned from dispatched interactions.
    pub(crate) channel_guilds: HashMap<u64, u64>,
}

impl State {
    /// Every REST request, in arrival order.
    pub fn requests(&self) -> &[Request] {
        &self.requests
    }

    /// The message with this id, unless it was deleted.
    pub fn message(&self, id: u64) -> Option<&Message> {
        self.messages.get(&id)
    }

    /// The messages of a channel in creation order, ephemeral ones included.
    pub fn messages(&self, channel_id: u64) -> Vec<&Message> {
        self.messages
            .values()
            .filter(|m| m.channel_id == channel_id)
            .collect()
    }

    /// All stored messages in creation order.
    pub fn all_messages(&self) -> impl Iterator<Item = &Message> {
        self.messages.values()
    }

    /// The interaction with this id.
    pub fn interaction(&self, id: u64) -> Option<&InteractionState> {
        self.interactions.get(&id)
    }

    /// All dispatched interactions in dispatch order.
    pub fn interactions(&self) -> impl Iterator<Item = &InteractionState> {
        self.interactions.values()
    }

    /// Registered commands: global ones without `guild_id`, guild ones with it.
    pub fn commands(&self) -> Vec<Value> {
        let mut all = self.global_commands.clone();
        for list in self.guild_commands.values() {
            all.extend(list.iter().cloned());
        }
        all
    }

    /// The message `@original` of an interaction points at, if any.
    pub fn original(&self, interaction_id: u64) -> Option<&Message> {
        let original = self.interactions.get(&interaction_id)?.original?;
        self.messages.get(&original)
    }
}

/// A frame for a gateway session's writer task.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Text(String),
    Close(u16, String),
}

/// One websocket connection from the bot.
#[derive(Debug)]
pub(crate) struct Session {
    pub id: u64,
    pub tx: mpsc::UnboundedSender<Outgoing>,
    /// Set once READY went out; interactions go only to ready sessions.
    pub ready: bool,
    /// The last sequence number sent on this session.
    pub seq: u64,
}

/// A pending injected 429.
#[derive(Clone, Debug)]
pub(crate) struct Injection {
    pub prefix: String,
    pub times: u32,
    pub retry_after: Duration,
    pub global: bool,
}

/// Settings a test may change while the fake runs.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub token_lifetime: Duration,
    pub attachment_limit: u64,
    pub response_deadline: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            token_lifetime: Duration::from_secs(15 * 60),
            attachment_limit: 10_485_760,
            response_deadline: Duration::from_secs(3),
        }
    }
}

/// Everything mutable, behind one lock.
#[derive(Debug, Default)]
pub(crate) struct World {
    pub state: State,
    pub settings: Settings,
    pub injections: Vec<Injection>,
    pub sessions: Vec<Session>,
    last_id: u64,
    counter: u64,
}

impl World {
    /// A fresh snowflake, increasing across the whole fake.
    pub fn next_id(&mut self) -> u64 {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(DISCORD_EPOCH_MS);
        let candidate = (ms.saturating_sub(DISCORD_EPOCH_MS)) << 22;
        self.last_id = candidate.max(self.last_id + 1);
        self.last_id
    }

    /// A fresh value for tokens and session ids; unique and hard to guess.
    pub fn next_secret(&mut self) -> String {
        use std::hash::{BuildHasher, Hasher};

        self.counter += 1;
        let mut out = String::new();
        for round in 0..4u64 {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(self.counter);
            hasher.write_u64(round);
            out.push_str(&format!("{:016x}", hasher.finish()));
        }
        out
    }

    /// The newest session that received READY and is still connected.
    pub fn live_session(&mut self) -> Option<&mut Session> {
        self.sessions.retain(|s| !s.tx.is_closed());
        self.sessions.iter_mut().rev().find(|s| s.ready)
    }
}

/// The state shared by the servers and every `Loopback` handle.
#[derive(Debug)]
pub(crate) struct Shared {
    world: Mutex<World>,
    changed: watch::Sender<u64>,
    pub token: String,
    pub application_id: u64,
    pub bot_user_id: u64,
    pub rest_addr: SocketAddr,
    pub plain_addr: SocketAddr,
    pub cert_der: Vec<u8>,
}

impl Shared {
    pub fn new(
        token: String,
        application_id: u64,
        bot_user_id: u64,
        rest_addr: SocketAddr,
        plain_addr: SocketAddr,
        cert_der: Vec<u8>,
    ) -> Shared {
        Shared {
            world: Mutex::new(World::default()),
            changed: watch::channel(0).0,
            token,
            application_id,
            bot_user_id,
            rest_addr,
            plain_addr,
            cert_der,
        }
    }

    /// Reads the world without signalling a change.
    pub fn read<R>(&self, f: impl FnOnce(&World) -> R) -> R {
        f(&self.lock())
    }

    /// Changes the world and wakes every waiter.
    pub fn write<R>(&self, f: impl FnOnce(&mut World) -> R) -> R {
        let out = f(&mut self.lock());
        self.changed.send_modify(|n| *n += 1);
        out
    }

    /// A receiver that sees every later change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, World> {
        // A panicking test thread must not take the fake down with it.
        self.world
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The base URL under which the plain listener serves uploaded files.
    pub fn files_base(&self) -> String {
        format!("http://{}/attachments", self.plain_addr)
    }

    /// The websocket URL of the gateway. The trailing slash matters: clients
    /// append `?v=10`, and a bare `?` after the port is no valid request target.
    pub fn gateway_url(&self) -> String {
        format!("ws://{}/", self.plain_addr)
    }
}
