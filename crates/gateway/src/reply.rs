//! Answering an interaction: the first response (timed for the ack metric), edits of it,
//! and refusals the user alone sees. Also what Discord's errors mean for us.

use std::time::Instant;

use serenity::all::{
    Builder, CreateAllowedMentions, CreateInteractionResponse, CreateInteractionResponseFollowup,
    CreateInteractionResponseMessage, EditInteractionResponse, InteractionId, Message,
};
use serenity::http::{Http, HttpError};
use tracing::warn;

use crate::App;

/// Discord error codes that mean an interaction token can no longer be used: unknown
/// webhook, unknown message, unknown interaction, invalid webhook token.
const DEAD_TOKEN_CODES: [isize; 4] = [10015, 10008, 10062, 50027];

/// An interaction being answered.
#[derive(Clone, Debug)]
pub struct Pending {
    pub id: InteractionId,
    pub token: String,
    pub received: Instant,
    /// When it arrived, in Unix milliseconds.
    pub received_ms: i64,
    /// The command or button, for metrics.
    pub what: &'static str,
    pub user_id: u64,
    pub guild_id: Option<u64>,
    pub channel_id: u64,
    pub attachment_limit: u64,
}

impl Pending {
    /// Sends the first response and records how long it took to be accepted.
    pub async fn ack(
        &self,
        app: &App,
        http: &Http,
        response: CreateInteractionResponse,
    ) -> Result<(), serenity::Error> {
        let sent = response.execute(http, (self.id, &self.token)).await;
        app.metrics
            .ack_seconds
            .observe(self.received.elapsed().as_secs_f64());
        if let Err(error) = &sent {
            count_error(app, error);
            warn!(interaction = %self.id, what = self.what, %error, "first response refused");
        }
        sent
    }

    /// Defers: Discord shows "thinking…" until the response is edited. `ephemeral` makes
    /// the eventual answer visible to the user alone.
    pub async fn defer(&self, app: &App, http: &Http, ephemeral: bool) -> bool {
        let message = CreateInteractionResponseMessage::new().ephemeral(ephemeral);
        self.ack(app, http, CreateInteractionResponse::Defer(message))
            .await
            .is_ok()
    }

    /// Answers at once with a message only the user sees.
    pub async fn private(&self, app: &App, http: &Http, text: &str) {
        let message = CreateInteractionResponseMessage::new()
            .content(clip(text, 2000))
            .ephemeral(true)
            .allowed_mentions(CreateAllowedMentions::new());
        let _ = self
            .ack(app, http, CreateInteractionResponse::Message(message))
            .await;
    }

    /// Edits the (deferred) response.
    pub async fn edit(
        &self,
        app: &App,
        http: &Http,
        edit: EditInteractionResponse,
    ) -> Result<Message, serenity::Error> {
        let edited = edit.execute(http, &self.token).await;
        if let Err(error) = &edited {
            count_error(app, error);
        }
        edited
    }

    /// After a public defer: removes the "thinking…" message and tells the user alone why
    /// nothing happened.
    pub async fn refuse(&self, app: &App, http: &Http, text: &str) {
        app.metrics
            .interactions
            .with_label_values(&[self.what, "refused"])
            .inc();
        if let Err(error) = http.delete_original_interaction_response(&self.token).await {
            count_error(app, &error);
        }
        let followup = CreateInteractionResponseFollowup::new()
            .content(clip(text, 2000))
            .ephemeral(true)
            .allowed_mentions(CreateAllowedMentions::new());
        if let Err(error) = followup.execute(http, (None, &self.token)).await {
            count_error(app, &error);
            warn!(interaction = %self.id, %error, "refusal not shown");
        }
    }

    /// After an ephemeral defer: the answer.
    pub async fn answer(&self, app: &App, http: &Http, text: &str) {
        let edit = EditInteractionResponse::new()
            .content(clip(text, 2000))
            .allowed_mentions(CreateAllowedMentions::new());
        let _ = self.edit(app, http, edit).await;
    }
}

/// Counts a Discord error under its JSON code (or HTTP status).
pub fn count_error(app: &App, error: &serenity::Error) {
    let code = match discord_code(error) {
        Some((_, code)) if code != 0 => code.to_string(),
        Some((status, _)) => format!("http_{status}"),
        None => "transport".to_string(),
    };
    app.metrics
        .discord_errors
        .with_label_values(&[code.as_str()])
        .inc();
}

/// The HTTP status and Discord JSON code of an API error.
pub fn discord_code(error: &serenity::Error) -> Option<(u16, isize)> {
    match error {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(response)) => {
            Some((response.status_code.as_u16(), response.error.code))
        }
        _ => None,
    }
}

/// Whether the error says the interaction token (or its message) is gone for good.
pub fn token_dead(error: &serenity::Error) -> bool {
    matches!(discord_code(error), Some((_, code)) if DEAD_TOKEN_CODES.contains(&code))
}

/// Whether retrying the same request later can succeed.
pub fn transient(error: &serenity::Error) -> bool {
    match discord_code(error) {
        Some((status, _)) => status == 429 || status >= 500,
        None => matches!(error, serenity::Error::Http(_)),
    }
}

/// `text` cut to `max` characters, with an ellipsis when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_counts_characters_not_bytes() {
        assert_eq!(clip("画仙画仙", 4), "画仙画仙");
        assert_eq!(clip("画仙画仙画", 4), "画仙画…");
        assert_eq!(clip("", 4), "");
    }
}
