//! Discord's JSON shapes, as the fake sends them: users, members, messages,
//! attachments, READY, interactions, commands.
//!
//! serenity drops a gateway event it cannot deserialize with nothing more than
//! a debug log, so every object here carries all the fields serenity 0.12.5
//! requires, even the ones the bot never reads. The integration tests prove
//! each shape by deserializing it with serenity's own types.

use serde_json::{json, Value};

use crate::state::{Attachment, InteractionState, Message, Shared};

/// Every member joined at the same fixed time; only the shape matters.
const JOINED_AT: &str = "2024-01-01T00:00:00.000000+00:00";

/// A Discord snowflake or other id, as a string (Discord's wire form).
pub(crate) fn id(value: u64) -> Value {
    Value::String(value.to_string())
}

/// A user object.
pub(crate) fn user(user_id: u64, name: &str, bot: bool) -> Value {
    json!({
        "id": id(user_id),
        "username": name,
        "discriminator": "0",
        "global_name": name,
        "avatar": null,
        "bot": bot,
        "system": false,
        "public_flags": 0,
        "flags": 0,
        "banner": null,
        "accent_color": null,
    })
}

/// The bot's own user object.
pub(crate) fn bot_user(shared: &Shared) -> Value {
    let mut me = user(shared.bot_user_id, "huaxian", true);
    me["verified"] = json!(true);
    me["mfa_enabled"] = json!(false);
    me["email"] = Value::Null;
    me["locale"] = json!("en-US");
    me
}

/// A guild member object for an interaction.
pub(crate) fn member(user_json: Value, roles: &[u64], permissions: u64) -> Value {
    json!({
        "user": user_json,
        "nick": null,
        "avatar": null,
        "banner": null,
        "roles": roles.iter().map(|r| id(*r)).collect::<Vec<_>>(),
        "joined_at": JOINED_AT,
        "premium_since": null,
        "deaf": false,
        "mute": false,
        "flags": 0,
        "pending": false,
        "permissions": permissions.to_string(),
        "communication_disabled_until": null,
    })
}

/// A member as `data.resolved.members` lists it: without `user`, `deaf` and `mute`.
pub(crate) fn resolved_member() -> Value {
    json!({
        "nick": null,
        "avatar": null,
        "roles": [],
        "joined_at": JOINED_AT,
        "premium_since": null,
        "flags": 0,
        "pending": false,
        "permissions": "0",
        "communication_disabled_until": null,
    })
}

/// The `d` of READY.
pub(crate) fn ready(shared: &Shared, session_id: &str, shard: Option<&Value>) -> Value {
    let mut d = json!({
        "v": 10,
        "user": bot_user(shared),
        "guilds": [],
        "session_id": session_id,
        "resume_gateway_url": shared.gateway_url(),
        "application": { "id": id(shared.application_id), "flags": 0 },
        "private_channels": [],
        "relationships": [],
        "user_settings": {},
        "presences": [],
        "geo_ordered_rtc_regions": [],
        "_trace": ["huaxian-discord-loopback"],
    });
    if let Some(shard) = shard {
        d["shard"] = shard.clone();
    }
    d
}

/// The MIME type Discord would report for a file name.
fn content_type(filename: &str) -> &'static str {
    let extension = filename
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase());
    match extension.as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("txt") => "text/plain; charset=utf-8",
        Some("json") => "application/json",
        _ => "application/octet-stream",
    }
}

/// A file name made safe for a URL path segment.
fn url_segment(filename: &str) -> String {
    let mut out = String::new();
    for byte in filename.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An attachment object; `url` points at the fake's plain listener.
pub(crate) fn attachment(shared: &Shared, file: &Attachment, ephemeral: bool) -> Value {
    let url = format!(
        "{}/{}/{}",
        shared.files_base(),
        file.id,
        url_segment(&file.filename)
    );
    let mut a = json!({
        "id": id(file.id),
        "filename": file.filename,
        "size": file.bytes.len(),
        "url": url,
        "proxy_url": url,
        "content_type": content_type(&file.filename),
    });
    if ephemeral {
        a["ephemeral"] = json!(true);
    }
    a
}

/// A message object in Discord's shape.
pub(crate) fn message(
    shared: &Shared,
    m: &Message,
    guild_id: Option<u64>,
    interaction: Option<&InteractionState>,
) -> Value {
    let ephemeral = m.flags & 64 != 0;
    let embeds: Vec<Value> = m
        .embeds
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if e.get("type").is_none() && e.is_object() {
                e["type"] = json!("rich");
            }
            e
        })
        .collect();
    // 20: reply to a slash command; 19: reply; 0: plain message.
    let kind = match (interaction, m.reference) {
        (Some(i), _) if i.kind == 2 && i.original == Some(m.id) => 20,
        (_, Some(_)) => 19,
        _ => 0,
    };
    let mut out = json!({
        "id": id(m.id),
        "channel_id": id(m.channel_id),
        "author": bot_user(shared),
        "content": m.content,
        "timestamp": m.timestamp,
        "edited_timestamp": m.edited_timestamp,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "mention_channels": [],
        "attachments": m.attachments.iter().map(|a| attachment(shared, a, ephemeral)).collect::<Vec<_>>(),
        "embeds": embeds,
        "reactions": [],
        "pinned": false,
        "type": kind,
        "flags": m.flags,
        "components": m.components,
        "sticker_items": [],
    });
    if m.by_webhook {
        out["webhook_id"] = id(shared.application_id);
        out["application_id"] = id(shared.application_id);
    }
    if let Some(reference) = m.reference {
        out["message_reference"] = json!({
            "type": 0,
            "message_id": id(reference),
            "channel_id": id(m.channel_id),
        });
    }
    if let Some(guild_id) = guild_id {
        out["guild_id"] = id(guild_id);
    }
    if let Some(i) = interaction {
        out["interaction_metadata"] = json!({
            "id": id(i.id),
            "type": i.kind,
            "user": user(i.user_id, &format!("user{}", i.user_id), false),
            "authorizing_integration_owners": owners(i.guild_id, i.user_id),
        });
        // A component interaction's metadata names the message whose component was used;
        // serenity refuses the whole message without it.
        if let Some(clicked) = i.component_message {
            out["interaction_metadata"]["interacted_message_id"] = id(clicked);
        }
    }
    out
}

/// `authorizing_integration_owners` for a guild-installed bot.
pub(crate) fn owners(guild_id: Option<u64>, _user_id: u64) -> Value {
    // Key 0 is the guild installation; "0" as the value means "used in a DM".
    json!({ "0": id(guild_id.unwrap_or(0)) })
}

/// The fields every interaction shares, for a given invoking user.
pub(crate) struct Envelope<'a> {
    pub id: u64,
    pub token: &'a str,
    pub kind: u8,
    pub guild_id: Option<u64>,
    pub channel_id: u64,
    pub user: Value,
    pub roles: &'a [u64],
    pub permissions: u64,
    pub attachment_limit: u64,
    pub data: Value,
}

/// An INTERACTION_CREATE `d`.
pub(crate) fn interaction(shared: &Shared, e: Envelope<'_>) -> Value {
    // Every permission a bot could hold; real Discord sends the channel's.
    let app_permissions = "2251799813685247";
    let channel = match e.guild_id {
        Some(guild_id) => json!({
            "id": id(e.channel_id),
            "type": 0,
            "name": "general",
            "guild_id": id(guild_id),
            "permissions": app_permissions,
            "nsfw": false,
        }),
        None => {
            json!({ "id": id(e.channel_id), "type": 1, "name": null, "permissions": app_permissions })
        }
    };
    let mut out = json!({
        "id": id(e.id),
        "application_id": id(shared.application_id),
        "type": e.kind,
        "data": e.data,
        "channel_id": id(e.channel_id),
        "channel": channel,
        "token": e.token,
        "version": 1,
        "app_permissions": app_permissions,
        "locale": "en-US",
        "entitlements": [],
        "authorizing_integration_owners": owners(e.guild_id, 0),
        "attachment_size_limit": e.attachment_limit,
    });
    match e.guild_id {
        Some(guild_id) => {
            out["guild_id"] = id(guild_id);
            out["guild_locale"] = json!("en-US");
            out["member"] = member(e.user, e.roles, e.permissions);
            out["context"] = json!(0);
        }
        None => {
            out["user"] = e.user;
            out["guild_locale"] = Value::Null;
            out["context"] = json!(1);
        }
    }
    out
}

/// A registered command as Discord echoes it back.
pub(crate) fn command(
    shared: &Shared,
    sent: &Value,
    command_id: u64,
    guild_id: Option<u64>,
) -> Value {
    let mut out = json!({
        "type": 1,
        "description": "",
        "options": [],
        "default_member_permissions": null,
        "dm_permission": true,
        "nsfw": false,
        "name_localizations": null,
        "description_localizations": null,
        "integration_types": [0],
        "contexts": null,
    });
    if let (Some(target), Some(fields)) = (out.as_object_mut(), sent.as_object()) {
        for (key, value) in fields {
            target.insert(key.clone(), value.clone());
        }
    }
    out["id"] = id(command_id);
    out["application_id"] = id(shared.application_id);
    out["version"] = id(command_id);
    match guild_id {
        Some(guild_id) => out["guild_id"] = id(guild_id),
        None => {
            if let Some(fields) = out.as_object_mut() {
                fields.remove("guild_id");
            }
        }
    }
    out
}

/// `GET /oauth2/applications/@me`.
pub(crate) fn application(shared: &Shared) -> Value {
    json!({
        "id": id(shared.application_id),
        "name": "huaxian",
        "icon": null,
        "description": "",
        "rpc_origins": [],
        "bot_public": true,
        "bot_require_code_grant": false,
        "terms_of_service_url": null,
        "privacy_policy_url": null,
        "owner": user(shared.bot_user_id + 1, "owner", false),
        "verify_key": "0".repeat(64),
        "team": null,
        "flags": 0,
        "bot": bot_user(shared),
        "tags": [],
        "install_params": null,
        "custom_install_url": null,
        "approximate_guild_count": 1,
        "redirect_uris": [],
        "interactions_endpoint_url": null,
    })
}

/// `GET /gateway/bot`.
pub(crate) fn gateway_bot(shared: &Shared) -> Value {
    json!({
        "url": shared.gateway_url(),
        "shards": 1,
        "session_start_limit": {
            "total": 1000,
            "remaining": 999,
            "reset_after": 14_400_000,
            "max_concurrency": 1,
        },
    })
}
