//! A raw gateway client for tests that do not need a whole serenity bot.

#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use huaxian_discord_loopback::Loopback;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Reads the next text frame as JSON, failing after five seconds.
pub async fn next_json(socket: &mut Socket) -> Value {
    let frame = tokio::time::timeout(std::time::Duration::from_secs(5), socket.next())
        .await
        .expect("a gateway frame within 5 s")
        .expect("the gateway stays open")
        .expect("a readable frame");
    match frame {
        Frame::Text(text) => serde_json::from_str(&text).unwrap(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Connects, identifies with the bot token and returns the socket and the READY frame.
pub async fn identify(loopback: &Loopback) -> (Socket, Value) {
    let url = format!("{}?v=10", loopback.gateway_url());
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let hello = next_json(&mut socket).await;
    assert_eq!(hello["op"], 10);
    let identify = json!({"op": 2, "d": {
        "token": format!("Bot {}", loopback.bot_token()),
        "intents": 0,
        "properties": {"os": "linux", "browser": "test", "device": "test"},
        "shard": [0, 1],
        "compress": true,
    }});
    socket
        .send(Frame::Text(identify.to_string()))
        .await
        .unwrap();
    let ready = next_json(&mut socket).await;
    (socket, ready)
}

/// The `Authorization` header value the fake accepts.
pub fn auth(loopback: &Loopback) -> String {
    format!("Bot {}", loopback.bot_token())
}

/// `https://discord.com/api/v10` + `path`.
pub fn api(path: &str) -> String {
    format!("https://discord.com/api/v10{path}")
}

/// Posts a bot message with the given body to a channel and returns its JSON.
pub async fn post_message(loopback: &Loopback, channel_id: u64, body: Value) -> Value {
    let response = loopback
        .http_client()
        .post(api(&format!("/channels/{channel_id}/messages")))
        .header("authorization", auth(loopback))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}
