//! The user's side: slash commands, button clicks and autocomplete sent to
//! the bot as interactions, and the handle a test keeps for each.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::state::{Attachment, InteractionState, Message, Request, World};
use crate::{gateway, messages, payloads, Loopback};

/// How long an interaction waits for a bot session that has received READY.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A Discord user as the fake presents them in interactions.
#[derive(Clone, Debug, Default)]
pub struct User {
    /// The user id.
    pub id: u64,
    /// The username.
    pub name: String,
    /// Role ids the member holds (guild interactions only).
    pub roles: Vec<u64>,
    /// The member's permissions bitfield, e.g. ADMINISTRATOR = 8.
    pub permissions: u64,
}

impl User {
    /// A user without roles or permissions.
    pub fn new(id: u64, name: &str) -> User {
        User {
            id,
            name: name.to_owned(),
            roles: Vec::new(),
            permissions: 0,
        }
    }
}

/// A slash command as a user types it.
#[derive(Clone, Debug, Default)]
pub struct Slash {
    /// Who runs it.
    pub user: User,
    /// The guild, or `None` for a DM.
    pub guild_id: Option<u64>,
    /// The channel it is run in.
    pub channel_id: u64,
    /// The command name.
    pub name: String,
    /// Discord's options array, subcommands included; `Null` means none.
    ///
    /// An option of type 11 (attachment) may name its file by filename or by
    /// index into `attachments`; the fake rewrites it to the attachment id.
    /// A user option (type 6) gets its user in `data.resolved.users`, and in a
    /// guild a member in `data.resolved.members`, as Discord sends them.
    pub options: Value,
    /// Files for attachment options: served on the plain listener and listed
    /// in `data.resolved.attachments`.
    pub attachments: Vec<(String, Vec<u8>)>,
}

impl Slash {
    /// A command without options or files.
    pub fn new(user: User, guild_id: Option<u64>, channel_id: u64, name: &str) -> Slash {
        Slash {
            user,
            guild_id,
            channel_id,
            name: name.to_owned(),
            options: json!([]),
            attachments: Vec::new(),
        }
    }

    /// Sets the options array.
    pub fn options(mut self, options: Value) -> Slash {
        self.options = options;
        self
    }

    /// Adds a file for an attachment option.
    pub fn attach(mut self, filename: &str, bytes: Vec<u8>) -> Slash {
        self.attachments.push((filename.to_owned(), bytes));
        self
    }
}

/// The handle of a dispatched interaction.
#[derive(Clone, Debug)]
pub struct Interaction {
    /// The interaction id.
    pub id: u64,
    /// The interaction token (the webhook routes' credential).
    pub token: String,
    /// The channel it happened in.
    pub channel_id: u64,
    /// The guild, or `None` in a DM.
    pub guild_id: Option<u64>,
    /// Discord's interaction type: 2 command, 3 component, 4 autocomplete.
    pub kind: u8,
    /// For a click: the message whose button was clicked.
    pub message_id: Option<u64>,
}

impl Interaction {
    /// The message `@original` points at, current state: the response the
    /// callback created, or for a component answered with 6 or 7 its message.
    pub fn response(&self, loopback: &Loopback) -> Option<Message> {
        loopback.with_state(|s| s.original(self.id).cloned())
    }

    /// The callback requests (`POST /interactions/{id}/...`), accepted or not.
    pub fn callbacks(&self, loopback: &Loopback) -> Vec<Request> {
        let prefix = format!("/interactions/{}/", self.id);
        loopback.with_state(|s| {
            s.requests
                .iter()
                .filter(|r| r.path.starts_with(&prefix))
                .cloned()
                .collect()
        })
    }

    /// Every request made for this interaction: callbacks and webhook routes.
    pub fn requests(&self, loopback: &Loopback) -> Vec<Request> {
        let callback = format!("/interactions/{}/", self.id);
        let token = format!("/{}", self.token);
        loopback.with_state(|s| {
            s.requests
                .iter()
                .filter(|r| r.path.starts_with(&callback) || r.path.contains(&token))
                .cloned()
                .collect()
        })
    }

    /// The follow-up messages, in order.
    pub fn followups(&self, loopback: &Loopback) -> Vec<Message> {
        loopback.with_state(|s| {
            let ids = s
                .interaction(self.id)
                .map(|i| i.followups.clone())
                .unwrap_or_default();
            ids.iter()
                .filter_map(|id| s.message(*id).cloned())
                .collect()
        })
    }

    /// What the fake knows about this interaction now.
    pub fn state(&self, loopback: &Loopback) -> Option<InteractionState> {
        loopback.with_state(|s| s.interaction(self.id).cloned())
    }

    /// The choices of an accepted autocomplete answer (callback type 8).
    pub fn choices(&self, loopback: &Loopback) -> Option<Vec<Value>> {
        let state = self.state(loopback)?;
        if state.response_type != Some(8) {
            return None;
        }
        state
            .response_data?
            .get("choices")
            .and_then(Value::as_array)
            .cloned()
    }
}

/// What a driver call asks the dispatcher to send.
struct Plan {
    kind: u8,
    user: User,
    guild_id: Option<u64>,
    channel_id: u64,
    component_message: Option<u64>,
}

impl Loopback {
    /// Sends a slash command (INTERACTION_CREATE type 2) to the bot.
    ///
    /// Waits up to 30 s for a gateway session that has received READY;
    /// panics, with a dump of the fake's state, if none turns up.
    pub async fn slash(&self, command: Slash) -> Interaction {
        let plan = Plan {
            kind: 2,
            user: command.user.clone(),
            guild_id: command.guild_id,
            channel_id: command.channel_id,
            component_message: None,
        };
        self.dispatch(plan, |world, shared| {
            let mut resolved = Map::new();
            let mut ids = Vec::new();
            for (filename, bytes) in &command.attachments {
                let file = Attachment {
                    id: world.next_id(),
                    filename: filename.clone(),
                    bytes: bytes.clone(),
                };
                world.state.files.insert(file.id, file.clone());
                resolved.insert(
                    file.id.to_string(),
                    payloads::attachment(shared, &file, true),
                );
                ids.push((filename.clone(), file.id));
            }
            let mut options = if command.options.is_array() {
                command.options.clone()
            } else {
                json!([])
            };
            point_at_attachments(&mut options, &ids);
            let mut data = json!({
                "id": payloads::id(command_id(world, command.guild_id, &command.name)),
                "name": command.name,
                "type": 1,
                "options": options,
            });
            if !resolved.is_empty() {
                data["resolved"] = json!({ "attachments": resolved });
            }
            let mut users = Vec::new();
            user_options(&options, &mut users);
            if !users.is_empty() {
                // Discord resolves every user option: the user, and in a guild the member.
                let resolved = &mut data["resolved"];
                for user_id in users {
                    let key = user_id.to_string();
                    let name = format!("user{user_id}");
                    resolved["users"][&key] = payloads::user(user_id, &name, false);
                    if command.guild_id.is_some() {
                        resolved["members"][&key] = payloads::resolved_member();
                    }
                }
            }
            if let Some(guild_id) = command.guild_id {
                data["guild_id"] = payloads::id(guild_id);
            }
            data
        })
        .await
    }

    /// Clicks a button (type 3, component_type 2) on a stored message.
    ///
    /// Panics if the message does not exist or has no enabled component with
    /// this `custom_id`: a real user could not click it either.
    pub async fn click(&self, user: &User, message_id: u64, custom_id: &str) -> Interaction {
        let (message, component) = self.component_on(message_id, custom_id, "click");
        let component_type = component["type"].as_u64().unwrap_or(2);
        let mut data = json!({ "custom_id": custom_id, "component_type": component_type });
        if component_type != 2 {
            data["values"] = json!([]);
        }
        self.use_component(user, &message, data).await
    }

    /// Chooses `values` in a string select menu (type 3, component_type 3) on a
    /// stored message, ephemeral ones included.
    ///
    /// Panics, as Discord's client would not let a user do it, if the message
    /// has no enabled string select with this `custom_id`, if a value is not
    /// one of its options' values, or if the number of values lies outside
    /// its `min_values..=max_values` (1..=1 when absent).
    pub async fn select(
        &self,
        user: &User,
        message_id: u64,
        custom_id: &str,
        values: &[&str],
    ) -> Interaction {
        let (message, menu) = self.component_on(message_id, custom_id, "select in");
        assert_eq!(
            menu["type"].as_u64(),
            Some(3),
            "component {custom_id:?} on message {message_id} is not a string select: {menu}"
        );
        let offered: Vec<&str> = menu["options"]
            .as_array()
            .map(|options| options.iter().filter_map(|o| o["value"].as_str()).collect())
            .unwrap_or_default();
        for value in values {
            assert!(
                offered.contains(value),
                "{value:?} is not an option of {custom_id:?} on message {message_id}; \
                 it offers {offered:?}"
            );
        }
        let min = menu["min_values"].as_u64().unwrap_or(1) as usize;
        let max = menu["max_values"].as_u64().unwrap_or(1) as usize;
        assert!(
            (min..=max).contains(&values.len()),
            "{custom_id:?} takes {min} to {max} values, not {}",
            values.len()
        );
        let data = json!({ "custom_id": custom_id, "component_type": 3, "values": values });
        self.use_component(user, &message, data).await
    }

    /// The message and its enabled component `custom_id`; panics with a dump
    /// when there is none, since a real user could not `verb` it either.
    fn component_on(&self, message_id: u64, custom_id: &str, verb: &str) -> (Message, Value) {
        let found = self.with_state(|s| {
            let message = s.message(message_id)?;
            let component = message
                .components
                .iter()
                .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
                .find(|c| c["custom_id"].as_str() == Some(custom_id))?;
            Some((message.clone(), component))
        });
        let Some((message, component)) = found else {
            panic!(
                "no component {custom_id:?} on message {message_id} to {verb}\n{}",
                self.dump()
            );
        };
        assert!(
            component["disabled"].as_bool() != Some(true),
            "component {custom_id:?} on message {message_id} is disabled"
        );
        (message, component)
    }

    /// Sends a component interaction on `message` with `data`.
    async fn use_component(&self, user: &User, message: &Message, data: Value) -> Interaction {
        let guild_id = self.with_state(|s| s.channel_guilds.get(&message.channel_id).copied());
        let plan = Plan {
            kind: 3,
            user: user.clone(),
            guild_id,
            channel_id: message.channel_id,
            component_message: Some(message.id),
        };
        self.dispatch(plan, |_, _| data.clone()).await
    }

    /// Sends an autocomplete request (type 4); mark the typed option with `"focused": true`.
    pub async fn autocomplete(
        &self,
        user: &User,
        guild_id: Option<u64>,
        channel_id: u64,
        command: &str,
        options: Value,
    ) -> Interaction {
        let plan = Plan {
            kind: 4,
            user: user.clone(),
            guild_id,
            channel_id,
            component_message: None,
        };
        self.dispatch(plan, |world, _| {
            let mut data = json!({
                "id": payloads::id(command_id(world, guild_id, command)),
                "name": command,
                "type": 1,
                "options": if options.is_array() { options.clone() } else { json!([]) },
            });
            if let Some(guild_id) = guild_id {
                data["guild_id"] = payloads::id(guild_id);
            }
            data
        })
        .await
    }

    /// Records and sends one interaction once a ready session exists.
    async fn dispatch(
        &self,
        plan: Plan,
        data: impl Fn(&mut World, &crate::state::Shared) -> Value,
    ) -> Interaction {
        let started = Instant::now();
        loop {
            let remaining = READY_TIMEOUT.saturating_sub(started.elapsed());
            self.wait_world(
                remaining,
                "a gateway session that received READY",
                |world| gateway::has_live_session(world).then_some(()),
            )
            .await;
            let sent = self.shared.write(|world| self.send(world, &plan, &data));
            if let Some(interaction) = sent {
                return interaction;
            }
        }
    }

    fn send(
        &self,
        world: &mut World,
        plan: &Plan,
        data: &impl Fn(&mut World, &crate::state::Shared) -> Value,
    ) -> Option<Interaction> {
        if !gateway::has_live_session(world) {
            return None;
        }
        let shared = &self.shared;
        let id = world.next_id();
        let token = format!("aW50ZXJhY3Rpb246{}{}", id, world.next_secret());
        let data = data(world, shared);
        if let Some(guild_id) = plan.guild_id {
            world.state.channel_guilds.insert(plan.channel_id, guild_id);
        }
        let mut d = payloads::interaction(
            shared,
            payloads::Envelope {
                id,
                token: &token,
                kind: plan.kind,
                guild_id: plan.guild_id,
                channel_id: plan.channel_id,
                user: payloads::user(plan.user.id, &plan.user.name, false),
                roles: &plan.user.roles,
                permissions: plan.user.permissions,
                attachment_limit: world.settings.attachment_limit,
                data,
            },
        );
        if let Some(message_id) = plan.component_message {
            d["message"] = messages::render(shared, world, message_id);
        }
        world.state.interactions.insert(
            id,
            InteractionState {
                id,
                token: token.clone(),
                kind: plan.kind,
                channel_id: plan.channel_id,
                guild_id: plan.guild_id,
                user_id: plan.user.id,
                dispatched_at: Instant::now(),
                response_type: None,
                response_data: None,
                original: None,
                component_message: plan.component_message,
                followups: Vec::new(),
            },
        );
        if !gateway::dispatch(world, "INTERACTION_CREATE", d) {
            world.state.interactions.remove(&id);
            return None;
        }
        Some(Interaction {
            id,
            token,
            channel_id: plan.channel_id,
            guild_id: plan.guild_id,
            kind: plan.kind,
            message_id: plan.component_message,
        })
    }
}

/// The registered command's id when the bot registered one by this name.
fn command_id(world: &mut World, guild_id: Option<u64>, name: &str) -> u64 {
    let guild = guild_id.and_then(|g| world.state.guild_commands.get(&g));
    let registered = guild
        .into_iter()
        .flatten()
        .chain(world.state.global_commands.iter())
        .find(|c| c["name"].as_str() == Some(name))
        .and_then(|c| c["id"].as_str())
        .and_then(|id| id.parse().ok());
    registered.unwrap_or_else(|| world.next_id())
}

/// The ids of the users named by user options (type 6), subcommands included.
fn user_options(options: &Value, found: &mut Vec<u64>) {
    for option in options.as_array().into_iter().flatten() {
        if let Some(nested) = option.get("options") {
            user_options(nested, found);
        }
        if option.get("type").and_then(Value::as_u64) != Some(6) {
            continue;
        }
        let id = match option.get("value") {
            Some(Value::String(id)) => id.parse().ok(),
            Some(Value::Number(id)) => id.as_u64(),
            _ => None,
        };
        found.extend(id);
    }
}

/// Rewrites attachment options that name a file (by filename or index) to its id.
fn point_at_attachments(options: &mut Value, ids: &[(String, u64)]) {
    let Some(list) = options.as_array_mut() else {
        return;
    };
    for option in list {
        if let Some(nested) = option.get_mut("options") {
            point_at_attachments(nested, ids);
        }
        if option.get("type").and_then(Value::as_u64) != Some(11) {
            continue;
        }
        let target = match option.get("value") {
            Some(Value::String(name)) => ids.iter().find(|(f, _)| f == name).map(|(_, id)| *id),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|i| ids.get(i as usize))
                .map(|(_, id)| *id),
            _ => None,
        };
        if let Some(id) = target {
            option["value"] = payloads::id(id);
        }
    }
}
