//! The fake's JSON, read back with serenity 0.12.5's own types.
//!
//! serenity drops a gateway event it cannot deserialize with only a debug
//! log, so a missing field would make the bot silently deaf. Each test takes
//! a frame or REST answer exactly as the fake sends it and parses it the way
//! serenity does.

mod common;

use huaxian_discord_loopback::{Loopback, Slash, User};
use serde_json::{json, Value};
use serenity::all::{
    BotGateway, Command, ComponentInteractionDataKind, CurrentApplicationInfo, CurrentUser, Event,
    GatewayEvent, Interaction, Message, ResolvedValue,
};

fn interaction_of(frame: Value) -> Interaction {
    match serde_json::from_value::<GatewayEvent>(frame).unwrap() {
        GatewayEvent::Dispatch(_, Event::InteractionCreate(event)) => event.interaction,
        other => panic!("expected INTERACTION_CREATE, got {other:?}"),
    }
}

#[tokio::test]
async fn ready_parses_as_serenity_ready() {
    let discord = Loopback::start().await;
    let (_socket, frame) = common::identify(&discord).await;

    match serde_json::from_value::<GatewayEvent>(frame).unwrap() {
        GatewayEvent::Dispatch(1, Event::Ready(event)) => {
            assert_eq!(event.ready.application.id.get(), discord.application_id());
            assert_eq!(event.ready.user.id.get(), discord.bot_user_id());
            assert!(event.ready.user.bot);
            assert_eq!(event.ready.version, 10);
            assert!(event
                .ready
                .resume_gateway_url
                .starts_with("ws://127.0.0.1:"));
            let shard = event.ready.shard.expect("the shard we identified with");
            assert_eq!(shard.total, 1);
        }
        other => panic!("expected READY, got {other:?}"),
    }
}

#[tokio::test]
async fn command_with_attachment_parses_and_serves_the_file() {
    let discord = Loopback::start().await;
    let (mut socket, _) = common::identify(&discord).await;
    let user = User {
        id: 42,
        name: "alice".into(),
        roles: vec![5],
        permissions: 8,
    };
    let options = json!([
        {"name": "prompt", "type": 3, "value": "a cat"},
        {"name": "image", "type": 11, "value": "init.png"},
    ]);
    let slash = Slash::new(user, Some(7), 8, "imagine")
        .options(options)
        .attach("init.png", vec![1, 2, 3]);
    let sent = discord.slash(slash).await;

    let frame = common::next_json(&mut socket).await;
    assert_eq!(frame["s"], 2);
    let Interaction::Command(command) = interaction_of(frame) else {
        panic!("not a command")
    };
    assert_eq!(command.id.get(), sent.id);
    assert_eq!(command.token, sent.token);
    assert_eq!(command.data.name, "imagine");
    assert_eq!(command.user.id.get(), 42);
    assert_eq!(command.guild_id.map(|g| g.get()), Some(7));
    let member = command.member.as_ref().expect("a guild member");
    assert_eq!(member.roles[0].get(), 5);
    assert!(member.permissions.unwrap().administrator());
    assert_eq!(command.attachment_size_limit, 10_485_760);

    let options = command.data.options();
    assert!(matches!(options[0].value, ResolvedValue::String("a cat")));
    let ResolvedValue::Attachment(file) = &options[1].value else {
        panic!("attachment option did not resolve: {:?}", options[1].value)
    };
    assert_eq!(file.filename, "init.png");
    assert_eq!(file.size, 3);
    let bytes = discord
        .http_client()
        .get(&file.url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.as_ref(), [1, 2, 3]);
}

#[tokio::test]
async fn dm_command_parses_with_a_user_and_no_member() {
    let discord = Loopback::start().await;
    let (mut socket, _) = common::identify(&discord).await;
    discord
        .slash(Slash::new(User::new(43, "bob"), None, 9, "help"))
        .await;

    let Interaction::Command(command) = interaction_of(common::next_json(&mut socket).await) else {
        panic!("not a command")
    };
    assert!(command.member.is_none());
    assert!(command.guild_id.is_none());
    assert_eq!(command.user.id.get(), 43);
}

#[tokio::test]
async fn button_click_parses_with_the_full_message() {
    let discord = Loopback::start().await;
    let (mut socket, _) = common::identify(&discord).await;
    let posted = common::post_message(
        &discord,
        8,
        json!({
            "content": "grid",
            "embeds": [{"title": "done", "fields": [{"name": "seed", "value": "1"}]}],
            "components": [{"type": 1, "components": [
                {"type": 2, "style": 1, "custom_id": "upscale:1", "label": "U1"},
                {"type": 2, "style": 5, "url": "https://example.invalid", "label": "link"},
            ]}],
        }),
    )
    .await;
    let parsed: Message = serde_json::from_value(posted.clone()).unwrap();
    assert_eq!(parsed.author.id.get(), discord.bot_user_id());
    let message_id = parsed.id.get();

    discord
        .click(&User::new(42, "alice"), message_id, "upscale:1")
        .await;
    let Interaction::Component(click) = interaction_of(common::next_json(&mut socket).await) else {
        panic!("not a component interaction")
    };
    assert_eq!(click.data.custom_id, "upscale:1");
    assert_eq!(click.message.id.get(), message_id);
    assert_eq!(click.message.components.len(), 1);
    assert_eq!(click.message.embeds[0].title.as_deref(), Some("done"));
}

#[tokio::test]
async fn user_options_resolve_to_the_user_and_member() {
    let discord = Loopback::start().await;
    let (mut socket, _) = common::identify(&discord).await;
    let options = json!([{"name": "ban", "type": 1, "options": [
        {"name": "user", "type": 6, "value": "77"}]}]);
    let slash = Slash::new(User::new(42, "alice"), Some(7), 8, "admin").options(options);
    discord.slash(slash).await;

    let Interaction::Command(command) = interaction_of(common::next_json(&mut socket).await) else {
        panic!("not a command")
    };
    let options = command.data.options();
    let ResolvedValue::SubCommand(args) = &options[0].value else {
        panic!("not a subcommand: {:?}", options[0].value)
    };
    let ResolvedValue::User(user, member) = &args[0].value else {
        panic!("user option did not resolve: {:?}", args[0].value)
    };
    assert_eq!(user.id.get(), 77);
    assert!(member.is_some(), "a guild command resolves the member too");
}

#[tokio::test]
async fn select_parses_as_a_string_select_with_its_values() {
    let discord = Loopback::start().await;
    let (mut socket, _) = common::identify(&discord).await;
    let posted = common::post_message(
        &discord,
        8,
        json!({"components": [{"type": 1, "components": [{
            "type": 3, "custom_id": "size", "min_values": 1, "max_values": 2,
            "options": [{"label": "S", "value": "s"}, {"label": "M", "value": "m"},
                        {"label": "L", "value": "l"}],
        }]}]}),
    )
    .await;
    let message_id: u64 = posted["id"].as_str().unwrap().parse().unwrap();

    let sent = discord
        .select(&User::new(42, "alice"), message_id, "size", &["m", "l"])
        .await;
    assert_eq!(sent.message_id, Some(message_id));
    let Interaction::Component(chose) = interaction_of(common::next_json(&mut socket).await) else {
        panic!("not a component interaction")
    };
    assert_eq!(chose.data.custom_id, "size");
    let ComponentInteractionDataKind::StringSelect { values } = &chose.data.kind else {
        panic!("not a string select: {:?}", chose.data.kind)
    };
    assert_eq!(values, &["m", "l"]);
    assert_eq!(chose.message.id.get(), message_id);
}

#[tokio::test]
async fn autocomplete_parses_with_the_focused_option() {
    let discord = Loopback::start().await;
    let (mut socket, _) = common::identify(&discord).await;
    let options = json!([{"name": "style", "type": 3, "value": "wat", "focused": true}]);
    discord
        .autocomplete(&User::new(42, "alice"), Some(7), 8, "imagine", options)
        .await;

    let Interaction::Autocomplete(typed) = interaction_of(common::next_json(&mut socket).await)
    else {
        panic!("not an autocomplete interaction")
    };
    let focused = typed.data.autocomplete().expect("a focused option");
    assert_eq!(focused.name, "style");
    assert_eq!(focused.value, "wat");
}

#[tokio::test]
async fn rest_answers_parse_as_serenity_models() {
    let discord = Loopback::start().await;
    let client = discord.http_client();
    let get = |path: &str| {
        client
            .get(common::api(path))
            .header("authorization", common::auth(&discord))
            .send()
    };

    let me: CurrentUser = get("/users/@me").await.unwrap().json().await.unwrap();
    assert_eq!(me.id.get(), discord.bot_user_id());
    let app: CurrentApplicationInfo = get("/oauth2/applications/@me")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(app.id.get(), discord.application_id());
    let gateway: BotGateway = get("/gateway/bot").await.unwrap().json().await.unwrap();
    assert_eq!(gateway.url, discord.gateway_url());

    let commands = json!([{"name": "imagine", "description": "draw", "options": [
        {"type": 3, "name": "prompt", "description": "what", "required": true}]}]);
    let path = format!(
        "/applications/{}/guilds/7/commands",
        discord.application_id()
    );
    let registered: Vec<Command> = client
        .put(common::api(&path))
        .header("authorization", common::auth(&discord))
        .json(&commands)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(registered[0].name, "imagine");
    assert_eq!(registered[0].guild_id.map(|g| g.get()), Some(7));
    assert_eq!(discord.commands()[0]["guild_id"], "7");
}
