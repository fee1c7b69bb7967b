//! Discord's rules as the fake enforces them, driven with plain reqwest.

mod common;

use std::time::Duration;

use huaxian_discord_loopback::{Interaction, Loopback, Slash, User};
use reqwest::multipart::{Form, Part};
use serde_json::{json, Value};

struct Answer {
    status: u16,
    body: Value,
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    Answer {
        status,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

async fn slash(discord: &Loopback) -> Interaction {
    discord
        .slash(Slash::new(User::new(42, "alice"), Some(7), 8, "imagine"))
        .await
}

async fn callback(discord: &Loopback, i: &Interaction, body: Value) -> Answer {
    let url = common::api(&format!("/interactions/{}/{}/callback", i.id, i.token));
    answer(
        discord
            .http_client()
            .post(url)
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

fn original_url(discord: &Loopback, i: &Interaction) -> String {
    common::api(&format!(
        "/webhooks/{}/{}/messages/@original",
        discord.application_id(),
        i.token
    ))
}

fn row(buttons: usize, prefix: &str) -> Value {
    let buttons: Vec<Value> = (0..buttons)
        .map(|n| json!({"type": 2, "style": 2, "custom_id": format!("{prefix}{n}"), "label": "b"}))
        .collect();
    json!({"type": 1, "components": buttons})
}

#[tokio::test]
async fn a_late_first_callback_is_an_unknown_interaction() {
    let discord = Loopback::start().await;
    let _socket = common::identify(&discord).await;
    discord.set_response_deadline(Duration::from_millis(150));
    let i = slash(&discord).await;
    tokio::time::sleep(Duration::from_millis(250)).await;

    let late = callback(&discord, &i, json!({"type": 5})).await;
    assert_eq!(
        (late.status, late.body["code"].as_u64()),
        (404, Some(10062))
    );
    assert_eq!(discord.requests().last().unwrap().code, Some(10062));
}

#[tokio::test]
async fn a_second_callback_is_already_acknowledged() {
    let discord = Loopback::start().await;
    let _socket = common::identify(&discord).await;
    let i = slash(&discord).await;

    assert_eq!(
        callback(&discord, &i, json!({"type": 5, "data": {"flags": 64}}))
            .await
            .status,
        204
    );
    let again = callback(&discord, &i, json!({"type": 4, "data": {"content": "hi"}})).await;
    assert_eq!(
        (again.status, again.body["code"].as_u64()),
        (400, Some(40060))
    );
    let placeholder = i.response(&discord).unwrap();
    assert_eq!(placeholder.flags, 64);
    assert!(placeholder.deferred);
    assert_eq!(i.callbacks(&discord).len(), 2);
}

#[tokio::test]
async fn original_is_unknown_before_the_answer_and_gone_after_the_token_lifetime() {
    let discord = Loopback::start().await;
    let _socket = common::identify(&discord).await;
    discord.set_token_lifetime(Duration::from_millis(300));
    let i = slash(&discord).await;
    let client = discord.http_client();

    let early = answer(client.get(original_url(&discord, &i)).send().await.unwrap()).await;
    assert_eq!(
        (early.status, early.body["code"].as_u64()),
        (404, Some(10008))
    );

    assert_eq!(
        callback(&discord, &i, json!({"type": 4, "data": {"content": "hi"}}))
            .await
            .status,
        204
    );
    let edit = client
        .patch(original_url(&discord, &i))
        .json(&json!({"content": "edited"}));
    let edited = answer(edit.send().await.unwrap()).await;
    assert_eq!(edited.status, 200);
    assert_eq!(edited.body["content"], "edited");
    assert_eq!(i.response(&discord).unwrap().edits, 1);

    tokio::time::sleep(Duration::from_millis(400)).await;
    let edit = client
        .patch(original_url(&discord, &i))
        .json(&json!({"content": "too late"}));
    let expired = answer(edit.send().await.unwrap()).await;
    assert_eq!(
        (expired.status, expired.body["code"].as_u64()),
        (401, Some(50027))
    );
}

#[tokio::test]
async fn uploads_above_the_limit_are_too_large() {
    let discord = Loopback::start().await;
    let _socket = common::identify(&discord).await;
    discord.set_attachment_limit(1000);
    let i = slash(&discord).await;

    let form = Form::new()
        .text(
            "payload_json",
            json!({"type": 4, "data": {"content": "big"}}).to_string(),
        )
        .part(
            "files[0]",
            Part::bytes(vec![0u8; 1001]).file_name("big.png"),
        );
    let url = common::api(&format!("/interactions/{}/{}/callback", i.id, i.token));
    let refused = answer(
        discord
            .http_client()
            .post(url)
            .multipart(form)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (refused.status, refused.body["code"].as_u64()),
        (413, Some(40005))
    );
    let recorded = discord.requests().pop().unwrap();
    assert_eq!(recorded.files[0].filename, "big.png");
    assert_eq!(recorded.body["type"], 4);
    assert!(
        i.response(&discord).is_none(),
        "a refused callback answers nothing"
    );
}

#[tokio::test]
async fn too_many_rows_and_long_custom_ids_are_invalid_form_bodies() {
    let discord = Loopback::start().await;
    let _socket = common::identify(&discord).await;
    let i = slash(&discord).await;

    let rows: Vec<Value> = (0..6).map(|r| row(1, &format!("r{r}-"))).collect();
    let six = callback(
        &discord,
        &i,
        json!({"type": 4, "data": {"components": rows}}),
    )
    .await;
    assert_eq!((six.status, six.body["code"].as_u64()), (400, Some(50035)));
    assert!(six.body["errors"]["components"]["_errors"].is_array());

    let long = json!({"type": 1, "components": [
        {"type": 2, "style": 1, "custom_id": "x".repeat(101), "label": "b"}]});
    let refused = callback(
        &discord,
        &i,
        json!({"type": 4, "data": {"components": [long]}}),
    )
    .await;
    assert_eq!(refused.body["code"], 50035);
    let field = &refused.body["errors"]["components"]["0"]["components"]["0"]["custom_id"];
    assert_eq!(field["_errors"][0]["code"], "BASE_TYPE_MAX_LENGTH");

    // Refusals do not count as the answer: a valid one still goes through.
    let ok = callback(
        &discord,
        &i,
        json!({"type": 4, "data": {"components": [row(5, "a")]}}),
    )
    .await;
    assert_eq!(ok.status, 204);
}

#[tokio::test]
async fn bot_routes_need_the_token_and_unknown_routes_are_recorded() {
    let discord = Loopback::start().await;
    let client = discord.http_client();

    let anonymous = client
        .post(common::api("/channels/8/messages"))
        .json(&json!({"content": "x"}));
    assert_eq!(anonymous.send().await.unwrap().status(), 401);
    let wrong = client
        .post(common::api("/channels/8/messages"))
        .header("authorization", "Bot not-the-token")
        .json(&json!({"content": "x"}));
    assert_eq!(wrong.send().await.unwrap().status(), 401);

    let unknown = client
        .get(common::api("/guilds/7/roles"))
        .header("authorization", common::auth(&discord));
    assert_eq!(unknown.send().await.unwrap().status(), 404);
    let recorded = discord.requests();
    assert_eq!(recorded.last().unwrap().route(), "GET /guilds/7/roles");
    assert_eq!(recorded.len(), 3);
    assert!(discord.messages(8).is_empty());
}

#[tokio::test]
async fn the_first_followup_after_a_deferral_fills_the_placeholder() {
    let discord = Loopback::start().await;
    let _socket = common::identify(&discord).await;
    let i = slash(&discord).await;
    let client = discord.http_client();
    let followup_url = common::api(&format!(
        "/webhooks/{}/{}",
        discord.application_id(),
        i.token
    ));

    let early = answer(
        client
            .post(&followup_url)
            .json(&json!({"content": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(early.body["code"], 10015);

    assert_eq!(callback(&discord, &i, json!({"type": 5})).await.status, 204);
    let first = answer(
        client
            .post(&followup_url)
            .json(&json!({"content": "one"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let second = answer(
        client
            .post(&followup_url)
            .json(&json!({"content": "two"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let original = i.response(&discord).unwrap();
    assert_eq!(first.body["id"], original.id.to_string());
    assert_eq!(original.content, "one");
    assert_ne!(second.body["id"], first.body["id"]);
    assert_eq!(i.followups(&discord)[0].content, "two");
}

#[tokio::test]
async fn edits_replace_or_keep_attachments_like_discord() {
    let discord = Loopback::start().await;
    let _socket = common::identify(&discord).await;
    let i = slash(&discord).await;
    let client = discord.http_client();
    assert_eq!(callback(&discord, &i, json!({"type": 5})).await.status, 204);

    let with_file = |name: &str, payload: Value| {
        Form::new().text("payload_json", payload.to_string()).part(
            "files[0]",
            Part::bytes(name.as_bytes().to_vec()).file_name(name.to_owned()),
        )
    };
    let first = with_file(
        "a.png",
        json!({"attachments": [{"id": 0, "filename": "a.png"}]}),
    );
    client
        .patch(original_url(&discord, &i))
        .multipart(first)
        .send()
        .await
        .unwrap();
    let kept_id = i.response(&discord).unwrap().attachments[0].id;

    let keep = with_file(
        "b.png",
        json!({"attachments": [{"id": kept_id.to_string()}, {"id": 0}]}),
    );
    client
        .patch(original_url(&discord, &i))
        .multipart(keep)
        .send()
        .await
        .unwrap();
    let names: Vec<String> = i
        .response(&discord)
        .unwrap()
        .attachments
        .iter()
        .map(|a| a.filename.clone())
        .collect();
    assert_eq!(names, ["a.png", "b.png"]);

    let replace = with_file("c.png", json!({"content": "only c"}));
    client
        .patch(original_url(&discord, &i))
        .multipart(replace)
        .send()
        .await
        .unwrap();
    let message = i.response(&discord).unwrap();
    assert_eq!(message.attachments.len(), 1);
    assert_eq!(message.attachments[0].bytes, b"c.png");
    assert_eq!(message.edits, 3);
}
