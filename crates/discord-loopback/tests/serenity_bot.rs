//! An unmodified serenity 0.12.5 client against the fake: READY, a slash
//! command answered with a deferral and an edit carrying a file and buttons,
//! a click on those buttons, a choice in an ephemeral select menu, and 429s
//! that serenity waits out and retries.

use std::time::Duration;

use huaxian_discord_loopback::{Loopback, Slash, User};
use serenity::all::{
    ButtonStyle, Client, ClientBuilder, ComponentInteractionDataKind, Context, CreateActionRow,
    CreateAttachment, CreateButton, CreateInteractionResponse, CreateInteractionResponseMessage,
    CreateSelectMenu, CreateSelectMenuKind, CreateSelectMenuOption, EditInteractionResponse,
    EventHandler, GatewayIntents, HttpBuilder, Interaction, MessageFlags, Ready,
};
use tokio::sync::mpsc;

/// Not a real PNG past the signature; the fake stores bytes, it does not decode them.
const PNG: &[u8] = b"\x89PNG\r\n\x1a\nloopback";

/// What the bot saw, reported back to the test.
#[derive(Debug, PartialEq)]
enum Seen {
    Ready,
    Click {
        custom_id: String,
        message_id: u64,
        content: String,
    },
    Select {
        custom_id: String,
        values: Vec<String>,
        ephemeral: bool,
    },
    Failed(String),
}

struct Bot {
    seen: mpsc::UnboundedSender<Seen>,
}

impl Bot {
    async fn answer_command(&self, ctx: &Context, command: &serenity::all::CommandInteraction) {
        let result = async {
            if command.data.name == "menu" {
                let options = ["red", "green", "blue"]
                    .into_iter()
                    .map(|colour| CreateSelectMenuOption::new(colour, colour))
                    .collect();
                let menu =
                    CreateSelectMenu::new("colour", CreateSelectMenuKind::String { options })
                        .placeholder("Colour");
                let message = CreateInteractionResponseMessage::new()
                    .content("pick one")
                    .ephemeral(true)
                    .components(vec![CreateActionRow::SelectMenu(menu)]);
                command
                    .create_response(&ctx.http, CreateInteractionResponse::Message(message))
                    .await?;
                return Ok(());
            }
            if command.data.name == "quick" {
                let message = CreateInteractionResponseMessage::new().content("working");
                command
                    .create_response(&ctx.http, CreateInteractionResponse::Message(message))
                    .await?;
            } else {
                let defer = CreateInteractionResponseMessage::new();
                command
                    .create_response(&ctx.http, CreateInteractionResponse::Defer(defer))
                    .await?;
            }
            let rows = vec![
                CreateActionRow::Buttons(vec![
                    CreateButton::new("upscale:1").label("U1"),
                    CreateButton::new("upscale:2").label("U2"),
                ]),
                CreateActionRow::Buttons(vec![CreateButton::new("reroll")
                    .label("Again")
                    .style(ButtonStyle::Secondary)]),
            ];
            let edit = EditInteractionResponse::new()
                .content("done")
                .new_attachment(CreateAttachment::bytes(PNG.to_vec(), "grid.png"))
                .components(rows);
            command.edit_response(&ctx.http, edit).await?;
            Ok::<_, serenity::Error>(())
        }
        .await;
        if let Err(why) = result {
            let _ = self.seen.send(Seen::Failed(why.to_string()));
        }
    }
}

#[serenity::async_trait]
impl EventHandler for Bot {
    async fn ready(&self, _: Context, _: Ready) {
        let _ = self.seen.send(Seen::Ready);
    }

    async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
        match interaction {
            Interaction::Command(command) => self.answer_command(&ctx, &command).await,
            Interaction::Component(click) => {
                let response = match &click.data.kind {
                    ComponentInteractionDataKind::StringSelect { values } => {
                        let _ = self.seen.send(Seen::Select {
                            custom_id: click.data.custom_id.clone(),
                            values: values.clone(),
                            ephemeral: click
                                .message
                                .flags
                                .is_some_and(|f| f.contains(MessageFlags::EPHEMERAL)),
                        });
                        let chosen = format!("chose {}", values.join(","));
                        let message = CreateInteractionResponseMessage::new()
                            .content(chosen)
                            .components(Vec::new());
                        CreateInteractionResponse::UpdateMessage(message)
                    }
                    _ => {
                        let _ = self.seen.send(Seen::Click {
                            custom_id: click.data.custom_id.clone(),
                            message_id: click.message.id.get(),
                            content: click.message.content.clone(),
                        });
                        CreateInteractionResponse::Acknowledge
                    }
                };
                if let Err(why) = click.create_response(&ctx.http, response).await {
                    let _ = self.seen.send(Seen::Failed(why.to_string()));
                }
            }
            _ => {}
        }
    }
}

async fn start_bot(discord: &Loopback) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let http = HttpBuilder::new(discord.bot_token())
        .client(discord.http_client())
        .build();
    let mut client: Client = ClientBuilder::new_with_http(http, GatewayIntents::empty())
        .event_handler(Bot { seen: tx })
        .await
        .expect("serenity client builds");
    tokio::spawn(async move {
        if let Err(why) = client.start().await {
            panic!("serenity client stopped: {why}");
        }
    });
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await;
    assert_eq!(first.expect("READY within 10 s"), Some(Seen::Ready));
    rx
}

fn alice() -> User {
    User {
        id: 42,
        name: "alice".into(),
        roles: vec![],
        permissions: 0,
    }
}

#[tokio::test]
async fn serenity_defers_edits_with_a_file_and_sees_the_click() {
    let discord = Loopback::start().await;
    let mut seen = start_bot(&discord).await;

    let interaction = discord
        .slash(Slash::new(alice(), Some(7), 8, "imagine"))
        .await;
    let grid = discord
        .wait_for(Duration::from_secs(10), "the edited response", |state| {
            let message = state.original(interaction.id)?;
            (message.edits > 0).then(|| message.clone())
        })
        .await;
    assert_eq!(grid.content, "done");
    assert_eq!(grid.attachments.len(), 1);
    assert_eq!(grid.attachments[0].filename, "grid.png");
    assert_eq!(grid.attachments[0].bytes, PNG);
    assert_eq!(grid.components.len(), 2);
    assert_eq!(grid.custom_ids(), ["upscale:1", "upscale:2", "reroll"]);
    assert!(grid.by_webhook);
    let callbacks = interaction.callbacks(&discord);
    assert_eq!(callbacks.len(), 1);
    assert_eq!(callbacks[0].body["type"], 5);

    let click = discord.click(&alice(), grid.id, "upscale:2").await;
    let report = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .unwrap();
    let expected = Seen::Click {
        custom_id: "upscale:2".into(),
        message_id: grid.id,
        content: "done".into(),
    };
    assert_eq!(report, Some(expected));
    discord
        .wait_for(
            Duration::from_secs(10),
            "the click's acknowledgement",
            |state| {
                state
                    .interaction(click.id)?
                    .response_type
                    .filter(|t| *t == 6)
            },
        )
        .await;
    assert_eq!(click.response(&discord).unwrap().id, grid.id);
}

#[tokio::test]
async fn serenity_reads_a_choice_in_an_ephemeral_menu_and_updates_it() {
    let discord = Loopback::start().await;
    let mut seen = start_bot(&discord).await;

    let asked = discord.slash(Slash::new(alice(), Some(7), 8, "menu")).await;
    let menu = discord
        .wait_for(Duration::from_secs(10), "the ephemeral menu", |state| {
            state.original(asked.id).cloned()
        })
        .await;
    assert_ne!(menu.flags & 64, 0, "the menu is ephemeral");
    assert_eq!(menu.custom_ids(), ["colour"]);

    let chose = discord
        .select(&alice(), menu.id, "colour", &["green"])
        .await;
    let report = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .unwrap();
    let expected = Seen::Select {
        custom_id: "colour".into(),
        values: vec!["green".into()],
        ephemeral: true,
    };
    assert_eq!(report, Some(expected));
    let updated = discord
        .wait_for(Duration::from_secs(10), "the updated menu", |state| {
            let answered = state.interaction(chose.id)?;
            (answered.response_type == Some(7)).then_some(())?;
            state.message(menu.id).cloned()
        })
        .await;
    assert_eq!(updated.content, "chose green");
    assert!(updated.components.is_empty());
    assert_ne!(updated.flags & 64, 0, "still ephemeral");
}

#[tokio::test]
#[should_panic(expected = "\"purple\" is not an option of \"colour\"")]
async fn a_value_the_menu_does_not_offer_cannot_be_chosen() {
    let discord = Loopback::start().await;
    let _seen = start_bot(&discord).await;
    let asked = discord.slash(Slash::new(alice(), Some(7), 8, "menu")).await;
    let menu = discord
        .wait_for(Duration::from_secs(10), "the ephemeral menu", |state| {
            state.original(asked.id).map(|m| m.id)
        })
        .await;
    discord.select(&alice(), menu, "colour", &["purple"]).await;
}

async fn retried_after_429(global: bool) {
    let discord = Loopback::start().await;
    let mut seen = start_bot(&discord).await;
    discord.inject_rate_limit("PATCH /webhooks/", 1, Duration::from_secs(1), global);

    let interaction = discord
        .slash(Slash::new(alice(), Some(7), 8, "quick"))
        .await;
    discord
        .wait_for(Duration::from_secs(10), "the edit after the 429", |state| {
            state
                .original(interaction.id)
                .filter(|m| m.edits > 0)
                .map(|_| ())
        })
        .await;
    assert!(seen.try_recv().is_err(), "the bot saw no error");

    let edits: Vec<_> = interaction
        .requests(&discord)
        .into_iter()
        .filter(|r| r.route().starts_with("PATCH /webhooks/"))
        .collect();
    assert_eq!(edits.len(), 2, "one refused edit and one retry");
    assert_eq!((edits[0].status, edits[0].retry_after), (429, Some(1.0)));
    assert_eq!(edits[1].status, 200);
    let waited = edits[1].at - edits[0].at;
    assert!(
        waited >= Duration::from_millis(950),
        "serenity retried after only {waited:?}"
    );
}

#[tokio::test]
async fn serenity_waits_out_a_route_429() {
    retried_after_429(false).await;
}

#[tokio::test]
async fn serenity_waits_out_a_global_429() {
    retried_after_429(true).await;
}
