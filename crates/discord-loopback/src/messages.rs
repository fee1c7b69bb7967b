//! Creating and editing stored messages, and the channel message routes.
//!
//! Interaction responses, follow-ups and plain channel messages all go
//! through [`create`] and [`edit`], so Discord's body rules and upload limit
//! apply the same way everywhere.

use serde_json::Value;

use crate::body::id_of;
use crate::payloads;
use crate::rules::{self, Failure};
use crate::state::{Attachment, Message, Shared, World};

/// The answer of a route: a status and an optional JSON body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub body: Option<Value>,
}

impl Reply {
    pub fn json(body: Value) -> Reply {
        Reply {
            status: 200,
            body: Some(body),
        }
    }

    pub fn no_content() -> Reply {
        Reply {
            status: 204,
            body: None,
        }
    }
}

/// A request's method and parsed body, as the routes see them.
pub(crate) struct Call<'a> {
    pub method: &'a str,
    pub body: &'a Value,
    pub files: &'a [Attachment],
}

/// The current time as Discord writes timestamps.
pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

/// Flags a sender may set: SUPPRESS_EMBEDS, EPHEMERAL, SUPPRESS_NOTIFICATIONS.
const SETTABLE_FLAGS: u64 = 4 | 64 | 4096;

/// Who is creating a message and on whose behalf.
pub(crate) struct Origin {
    pub channel_id: u64,
    pub by_webhook: bool,
    pub interaction_id: Option<u64>,
}

fn parse_id(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn strings(body: &Value, key: &str) -> Vec<Value> {
    body.get(key)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Gives uploaded files their attachment ids and makes them servable.
fn store_files(world: &mut World, files: &[Attachment]) -> Vec<(u64, Attachment)> {
    files
        .iter()
        .map(|file| {
            let stored = Attachment {
                id: world.next_id(),
                ..file.clone()
            };
            world.state.files.insert(stored.id, stored.clone());
            (file.id, stored)
        })
        .collect()
}

/// Creates a message after checking Discord's rules; returns its id.
pub(crate) fn create(
    world: &mut World,
    origin: Origin,
    body: &Value,
    files: &[Attachment],
) -> Result<u64, Failure> {
    rules::check_message(body)?;
    rules::check_files(files, world.settings.attachment_limit)?;
    if rules::is_empty_message(body, files) {
        return Err(Failure::empty_message());
    }
    let reference = match body.get("message_reference").filter(|r| !r.is_null()) {
        Some(r) => {
            let target = r.get("message_id").and_then(parse_id);
            let known = target.filter(|id| world.state.messages.contains_key(id));
            if known.is_none() {
                return Err(Failure::invalid_form(
                    "message_reference",
                    "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                    "Unknown message",
                ));
            }
            known
        }
        None => None,
    };
    let flags = body.get("flags").and_then(Value::as_u64).unwrap_or(0) & SETTABLE_FLAGS;
    let id = world.next_id();
    let attachments = store_files(world, files)
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    let message = Message {
        id,
        channel_id: origin.channel_id,
        content: body
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        embeds: strings(body, "embeds"),
        components: strings(body, "components"),
        attachments,
        // Only interaction messages can be ephemeral.
        flags: if origin.by_webhook {
            flags
        } else {
            flags & !64
        },
        reference,
        interaction_id: origin.interaction_id,
        edits: 0,
        by_webhook: origin.by_webhook,
        deferred: false,
        timestamp: now(),
        edited_timestamp: None,
    };
    world.state.messages.insert(id, message);
    Ok(id)
}

/// The empty "thinking" message a deferred response shows.
pub(crate) fn create_placeholder(world: &mut World, origin: Origin, flags: u64) -> u64 {
    let id = world.next_id();
    let message = Message {
        id,
        channel_id: origin.channel_id,
        content: String::new(),
        embeds: Vec::new(),
        components: Vec::new(),
        attachments: Vec::new(),
        flags: flags & 64,
        reference: None,
        interaction_id: origin.interaction_id,
        edits: 0,
        by_webhook: origin.by_webhook,
        deferred: true,
        timestamp: now(),
        edited_timestamp: None,
    };
    world.state.messages.insert(id, message);
    id
}

/// Applies an edit body (and new files) to a stored message.
///
/// Fields absent from the body stay as they are. Attachments follow Discord:
/// when the body lists `attachments`, exactly the listed existing ones stay
/// and listed new ones (ids `n` of `files[n]`) are added; without the list,
/// new files replace the old ones and no files leave them alone.
pub(crate) fn edit(
    world: &mut World,
    message_id: u64,
    body: &Value,
    files: &[Attachment],
) -> Result<(), Failure> {
    rules::check_message(body)?;
    rules::check_files(files, world.settings.attachment_limit)?;
    let Some(old) = world.state.messages.get(&message_id) else {
        return Err(Failure::unknown_message());
    };
    let old_attachments = old.attachments.clone();
    let uploaded = store_files(world, files);

    let attachments = match body.get("attachments").and_then(Value::as_array) {
        Some(listed) => {
            let mut kept: Vec<Attachment> = Vec::new();
            for entry in listed {
                let Some(id) = id_of(entry) else { continue };
                if let Some(existing) = old_attachments.iter().find(|a| a.id == id) {
                    kept.push(existing.clone());
                } else if let Some((_, new)) = uploaded.iter().find(|(n, _)| *n == id) {
                    kept.push(new.clone());
                }
            }
            // Files the list forgot to mention are still attached, as on Discord.
            for (_, new) in &uploaded {
                if !kept.iter().any(|k| k.id == new.id) {
                    kept.push(new.clone());
                }
            }
            kept
        }
        None if !uploaded.is_empty() => uploaded.into_iter().map(|(_, a)| a).collect(),
        None => old_attachments,
    };
    let total: u64 = attachments.iter().map(|a| a.bytes.len() as u64).sum();
    if attachments.len() > 10 || total > world.settings.attachment_limit {
        return Err(Failure::too_large());
    }

    let Some(message) = world.state.messages.get_mut(&message_id) else {
        return Err(Failure::unknown_message());
    };
    if let Some(content) = body.get("content") {
        message.content = content.as_str().unwrap_or("").to_owned();
    }
    if body.get("embeds").is_some() {
        message.embeds = strings(body, "embeds");
    }
    if body.get("components").is_some() {
        message.components = strings(body, "components");
    }
    if let Some(flags) = body.get("flags").and_then(Value::as_u64) {
        // Ephemerality is fixed at creation; only the other bits can change.
        message.flags = (message.flags & 64) | (flags & SETTABLE_FLAGS & !64);
    }
    message.attachments = attachments;
    message.edits += 1;
    message.deferred = false;
    message.edited_timestamp = Some(now());
    Ok(())
}

/// A stored message in Discord's JSON shape.
pub(crate) fn render(shared: &Shared, world: &World, message_id: u64) -> Value {
    let Some(message) = world.state.messages.get(&message_id) else {
        return Value::Null;
    };
    let guild_id = world.state.channel_guilds.get(&message.channel_id).copied();
    let interaction = message
        .interaction_id
        .and_then(|i| world.state.interactions.get(&i));
    payloads::message(shared, message, guild_id, interaction)
}

/// The `/channels/{channel}/messages[/{id}]` routes; the bot token is checked already.
pub(crate) fn channel_route(
    shared: &Shared,
    world: &mut World,
    call: &Call<'_>,
    channel: &str,
    rest: &[&str],
) -> Option<Result<Reply, Failure>> {
    let Call {
        method,
        body,
        files,
    } = *call;
    let Ok(channel_id) = channel.parse::<u64>() else {
        return Some(Err(Failure::invalid_form(
            "channel_id",
            "NUMBER_TYPE_COERCE",
            "Value is not snowflake.",
        )));
    };
    // Ephemeral messages exist only for their interaction's webhook.
    let visible = |world: &World, id: &str| -> Result<u64, Failure> {
        let id = id.parse::<u64>().map_err(|_| Failure::unknown_message())?;
        match world.state.messages.get(&id) {
            Some(m) if m.channel_id == channel_id && m.flags & 64 == 0 => Ok(id),
            _ => Err(Failure::unknown_message()),
        }
    };
    let result = match (method, rest) {
        ("POST", []) => {
            let origin = Origin {
                channel_id,
                by_webhook: false,
                interaction_id: None,
            };
            create(world, origin, body, files).map(|id| Reply::json(render(shared, world, id)))
        }
        ("GET", []) => {
            let mut list: Vec<Value> = world
                .state
                .messages
                .values()
                .filter(|m| m.channel_id == channel_id && m.flags & 64 == 0)
                .map(|m| render(shared, world, m.id))
                .collect();
            list.reverse();
            list.truncate(50);
            Ok(Reply::json(Value::Array(list)))
        }
        ("GET", [id]) => visible(world, id).map(|id| Reply::json(render(shared, world, id))),
        ("PATCH", [id]) => visible(world, id)
            .and_then(|id| edit(world, id, body, files).map(|()| id))
            .map(|id| Reply::json(render(shared, world, id))),
        ("DELETE", [id]) => visible(world, id).map(|id| {
            world.state.messages.remove(&id);
            Reply::no_content()
        }),
        _ => return None,
    };
    Some(result)
}
