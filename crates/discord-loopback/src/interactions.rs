//! Interaction callbacks and the interaction webhook routes.
//!
//! Discord's timing rules live here: the first callback must arrive within
//! the response deadline (3 s) of dispatch or it is an unknown interaction
//! (10062); only one callback is accepted (40060); the token's webhook routes
//! work for the token lifetime (15 min) and answer 50027 afterwards; and
//! `@original` is an unknown message (10008) until the interaction has been
//! answered with something that makes or names a message.

use serde_json::{json, Value};

use crate::messages::{self, Call, Origin, Reply};
use crate::rules::Failure;
use crate::state::{Attachment, Shared, World};

/// Answers `POST /interactions/{id}/{token}/callback`.
pub(crate) fn callback(
    world: &mut World,
    id: &str,
    token: &str,
    body: &Value,
    files: &[Attachment],
) -> Result<Reply, Failure> {
    let id = id
        .parse::<u64>()
        .map_err(|_| Failure::unknown_interaction())?;
    let Some(record) = world
        .state
        .interactions
        .get(&id)
        .filter(|r| r.token == token)
    else {
        return Err(Failure::unknown_interaction());
    };
    if record.response_type.is_some() {
        return Err(Failure::already_acknowledged());
    }
    if record.dispatched_at.elapsed() > world.settings.response_deadline {
        return Err(Failure::unknown_interaction());
    }
    let (kind, channel_id, component_message) =
        (record.kind, record.channel_id, record.component_message);

    let Some(response_type) = body.get("type").and_then(Value::as_u64) else {
        return Err(Failure::invalid_form(
            "type",
            "BASE_TYPE_REQUIRED",
            "This field is required",
        ));
    };
    let data = body
        .get("data")
        .filter(|d| d.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    let origin = Origin {
        channel_id,
        by_webhook: true,
        interaction_id: Some(id),
    };
    let wrong_type = || {
        Failure::invalid_form(
            "type",
            "INTERACTION_RESPONSE_TYPE_INVALID",
            &format!("Response type {response_type} is not valid for interaction type {kind}."),
        )
    };

    // 2 command, 3 component, 4 autocomplete, 5 modal submit.
    let original = match (response_type, kind) {
        (4, 2 | 3 | 5) => Some(messages::create(world, origin, &data, files)?),
        (5, 2 | 3 | 5) => {
            let flags = data.get("flags").and_then(Value::as_u64).unwrap_or(0);
            Some(messages::create_placeholder(world, origin, flags))
        }
        (6, 3 | 5) => component_message,
        (7, 3 | 5) => {
            let target = component_message.ok_or_else(wrong_type)?;
            messages::edit(world, target, &data, files)?;
            Some(target)
        }
        (8, 4) => {
            let choices = data
                .get("choices")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if choices > 25 {
                return Err(Failure::invalid_form(
                    "data.choices",
                    "BASE_TYPE_MAX_LENGTH",
                    "Must be 25 or fewer in length.",
                ));
            }
            None
        }
        (9, 2 | 3) => None,
        (1..=9, _) => return Err(wrong_type()),
        _ => {
            return Err(Failure::invalid_form(
                "type",
                "UNION_TYPE_CHOICES",
                "Value of field \"type\" must be one of (1, 4, 5, 6, 7, 8, 9, 10, 12).",
            ))
        }
    };

    if let Some(record) = world.state.interactions.get_mut(&id) {
        record.response_type = Some(response_type as u8);
        record.response_data = Some(data);
        record.original = original;
    }
    Ok(Reply::no_content())
}

/// Answers `/webhooks/{application}/{token}[/messages/{id}]`.
pub(crate) fn webhook(
    shared: &Shared,
    world: &mut World,
    call: &Call<'_>,
    application: &str,
    token: &str,
    rest: &[&str],
) -> Option<Result<Reply, Failure>> {
    let Call {
        method,
        body,
        files,
    } = *call;
    if !matches!(
        (method, rest),
        ("POST", []) | ("GET" | "PATCH" | "DELETE", ["messages", _])
    ) {
        return None;
    }
    if application.parse::<u64>().ok() != Some(shared.application_id) {
        return Some(Err(Failure::unknown_webhook()));
    }
    let Some(record) = world.state.interactions.values().find(|r| r.token == token) else {
        return Some(Err(Failure::invalid_webhook_token()));
    };
    if record.dispatched_at.elapsed() > world.settings.token_lifetime {
        return Some(Err(Failure::invalid_webhook_token()));
    }
    let record = record.clone();

    let result = match (method, rest) {
        ("POST", []) => followup(shared, world, record.id, body, files),
        (_, ["messages", target]) => {
            let target = if *target == "@original" {
                record.original
            } else {
                target
                    .parse::<u64>()
                    .ok()
                    .filter(|t| record.original == Some(*t) || record.followups.contains(t))
            };
            match target.filter(|t| world.state.messages.contains_key(t)) {
                None => Err(Failure::unknown_message()),
                Some(target) => match method {
                    "GET" => Ok(Reply::json(messages::render(shared, world, target))),
                    "PATCH" => messages::edit(world, target, body, files)
                        .map(|()| Reply::json(messages::render(shared, world, target))),
                    _ => {
                        world.state.messages.remove(&target);
                        Ok(Reply::no_content())
                    }
                },
            }
        }
        _ => return None,
    };
    Some(result)
}

/// A follow-up message; before any response the webhook does not exist yet.
fn followup(
    shared: &Shared,
    world: &mut World,
    interaction_id: u64,
    body: &Value,
    files: &[Attachment],
) -> Result<Reply, Failure> {
    let Some(record) = world.state.interactions.get(&interaction_id) else {
        return Err(Failure::unknown_webhook());
    };
    if record.response_type.is_none() {
        return Err(Failure::unknown_webhook());
    }
    // Discord turns the first follow-up after a deferral into the edit of the
    // "thinking" placeholder instead of a new message.
    let placeholder = record
        .original
        .filter(|o| world.state.messages.get(o).is_some_and(|m| m.deferred));
    if let Some(placeholder) = placeholder {
        messages::edit(world, placeholder, body, files)?;
        return Ok(Reply::json(messages::render(shared, world, placeholder)));
    }
    let origin = Origin {
        channel_id: record.channel_id,
        by_webhook: true,
        interaction_id: Some(interaction_id),
    };
    let id = messages::create(world, origin, body, files)?;
    if let Some(record) = world.state.interactions.get_mut(&interaction_id) {
        record.followups.push(id);
    }
    Ok(Reply::json(messages::render(shared, world, id)))
}
