//! serenity's event handler: READY registers the commands, and every interaction is routed
//! to the code that answers it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serenity::all::{
    CommandInteraction, ComponentInteraction, Context, EventHandler, Interaction, Ready,
};
use serenity::async_trait;
use tracing::{info, info_span, warn, Instrument};

use crate::reply::Pending;
use crate::{admin, buttons, commands, manage, submit, App};

pub struct Handler {
    pub app: Arc<App>,
}

#[async_trait]
impl EventHandler for Handler {
    async fn ready(&self, ctx: Context, ready: Ready) {
        info!(bot = %ready.user.name, guilds = ready.guilds.len(), "connected to Discord");
        self.app.ready.store(true, Ordering::Relaxed);
        if !self.app.registered.swap(true, Ordering::Relaxed) {
            if let Err(error) = commands::register(&self.app, &ctx.http).await {
                self.app.registered.store(false, Ordering::Relaxed);
                warn!(%error, "slash commands not registered; they are retried on the next READY");
            }
        }
    }

    async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
        let received = Instant::now();
        let received_ms = chrono::Utc::now().timestamp_millis();
        match interaction {
            Interaction::Command(command) => {
                let pending = pending_command(&command, received, received_ms);
                let span = info_span!("interaction", id = %command.id, user = pending.user_id, command = %command.data.name);
                self.command(&ctx, command, pending).instrument(span).await;
            }
            Interaction::Component(component) => {
                let pending = pending_component(&component, received, received_ms);
                let span = info_span!("interaction", id = %component.id, user = pending.user_id, button = %component.data.custom_id);
                self.component(&ctx, component, pending)
                    .instrument(span)
                    .await;
            }
            Interaction::Autocomplete(command) => {
                manage::autocomplete(&self.app, &ctx.http, &command).await;
            }
            _ => {}
        }
    }
}

impl Handler {
    async fn command(&self, ctx: &Context, command: CommandInteraction, mut pending: Pending) {
        let app = &self.app;
        let http = &ctx.http;
        match command.data.name.as_str() {
            "imagine" => {
                pending.what = "imagine";
                submit::imagine(app, http, &command, &pending).await;
            }
            "blend" => {
                pending.what = "blend";
                submit::blend(app, http, &command, &pending).await;
            }
            "settings" => {
                pending.what = "settings";
                manage::settings(app, http, &pending).await;
            }
            "info" => {
                pending.what = "info";
                manage::info(app, http, &pending).await;
            }
            "fast" | "relax" => {
                pending.what = if command.data.name == "fast" {
                    "fast"
                } else {
                    "relax"
                };
                manage::lane(app, http, &pending).await;
            }
            "cancel" => {
                pending.what = "cancel";
                manage::cancel_menu(app, http, &pending).await;
            }
            "admin" => {
                pending.what = "admin";
                admin::admin(app, http, &command, &pending).await;
            }
            other => {
                warn!(
                    command = other,
                    "unknown command; the registration is out of date"
                );
                pending
                    .private(
                        app,
                        http,
                        "This command is no longer served; the bot's commands were updated.",
                    )
                    .await;
            }
        }
    }

    async fn component(&self, ctx: &Context, component: ComponentInteraction, pending: Pending) {
        let app = &self.app;
        let http = &ctx.http;
        let id = component.data.custom_id.as_str();
        if let Some((action, parent)) = buttons::parse(id) {
            submit::button(app, http, &pending, action, parent).await;
        } else if let Some(rest) = id.strip_prefix(manage::SETTING_PREFIX) {
            manage::change_setting(app, http, &component, &pending, rest).await;
        } else if id == manage::CANCEL_ID {
            manage::cancel_chosen(app, http, &component, &pending).await;
        } else {
            pending
                .private(
                    app,
                    http,
                    "This button is not one of huaxian's, or is from an older version.",
                )
                .await;
        }
    }
}

fn pending_command(command: &CommandInteraction, received: Instant, received_ms: i64) -> Pending {
    Pending {
        id: command.id,
        token: command.token.clone(),
        received,
        received_ms,
        what: "command",
        user_id: command.user.id.get(),
        guild_id: command.guild_id.map(|g| g.get()),
        channel_id: command.channel_id.get(),
        attachment_limit: u64::from(command.attachment_size_limit),
    }
}

fn pending_component(
    component: &ComponentInteraction,
    received: Instant,
    received_ms: i64,
) -> Pending {
    Pending {
        id: component.id,
        token: component.token.clone(),
        received,
        received_ms,
        what: "button",
        user_id: component.user.id.get(),
        guild_id: component.guild_id.map(|g| g.get()),
        channel_id: component.channel_id.get(),
        attachment_limit: u64::from(component.attachment_size_limit),
    }
}
