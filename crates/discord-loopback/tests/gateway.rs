//! The gateway handshake and session handling, driven with a raw websocket.

mod common;

use futures_util::{SinkExt, StreamExt};
use huaxian_discord_loopback::{Loopback, Slash, User};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as Frame;

#[tokio::test]
async fn heartbeats_are_acknowledged_and_resumes_are_refused() {
    let discord = Loopback::start().await;
    let (mut socket, _) = common::identify(&discord).await;

    socket
        .send(Frame::Text(json!({"op": 1, "d": 1}).to_string()))
        .await
        .unwrap();
    assert_eq!(common::next_json(&mut socket).await["op"], 11);

    let resume = json!({"op": 6, "d": {"token": discord.bot_token(), "session_id": "x", "seq": 1}});
    socket.send(Frame::Text(resume.to_string())).await.unwrap();
    assert_eq!(
        common::next_json(&mut socket).await,
        json!({"op": 9, "d": false})
    );
}

#[tokio::test]
async fn a_wrong_token_closes_the_session_with_4004() {
    let discord = Loopback::start().await;
    let (mut socket, _) = tokio_tungstenite::connect_async(discord.gateway_url())
        .await
        .unwrap();
    assert_eq!(common::next_json(&mut socket).await["op"], 10);

    let identify = json!({"op": 2, "d": {"token": "Bot nope", "intents": 0, "properties": {}}});
    socket
        .send(Frame::Text(identify.to_string()))
        .await
        .unwrap();
    match socket.next().await {
        Some(Ok(Frame::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4004),
        other => panic!("expected a 4004 close, got {other:?}"),
    }
    assert!(!discord.has_ready_session());
}

#[tokio::test]
async fn interactions_go_to_the_newest_ready_session() {
    let discord = Loopback::start().await;
    let alice = User::new(42, "alice");
    let (mut old, _) = common::identify(&discord).await;
    let (mut new, _) = common::identify(&discord).await;

    let first = discord
        .slash(Slash::new(alice.clone(), None, 9, "one"))
        .await;
    let frame = common::next_json(&mut new).await;
    assert_eq!(frame["d"]["id"], first.id.to_string());
    assert_eq!(frame["s"], 2);

    // A restarted bot: the newer connection drops and the older one takes over.
    new.close(None).await.unwrap();
    drop(new);
    for _ in 0..500 {
        if discord.ready_sessions() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(discord.ready_sessions(), 1);
    let second = discord.slash(Slash::new(alice, None, 9, "two")).await;
    let frame = common::next_json(&mut old).await;
    assert_eq!(frame["d"]["id"], second.id.to_string());
    assert_eq!(frame["d"]["data"]["name"], "two");
}

#[tokio::test]
#[should_panic(expected = "timed out after 50ms waiting for a message in channel 8")]
async fn wait_for_panics_with_what_it_waited_for() {
    let discord = Loopback::start().await;
    let client = discord.http_client();
    let _ = client.get(common::api("/gateway")).send().await.unwrap();
    let timeout = std::time::Duration::from_millis(50);
    discord
        .wait_for(timeout, "a message in channel 8", |state| {
            state.messages(8).first().map(|_| ())
        })
        .await;
}
