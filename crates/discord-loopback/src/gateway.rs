//! The plain listener: the gateway websocket and the file server.
//!
//! One plain-HTTP port serves both. A request that asks for a websocket
//! upgrade becomes a gateway session; `GET /attachments/{id}/{name}` returns
//! an uploaded file; anything else is a 404.
//!
//! A session follows Discord's handshake: HELLO on connect, READY (sequence 1)
//! after an IDENTIFY with the right token, an ACK for every heartbeat. A
//! RESUME is answered with an invalid session (`d: false`), which makes
//! serenity identify afresh. Interactions go to the newest connected session
//! that has received READY, so a restarted bot simply takes over.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::WebSocketStream;

use crate::payloads;
use crate::state::{Outgoing, Session, Shared, World};

/// How often the bot is told to heartbeat, in milliseconds (Discord's usual value).
const HEARTBEAT_INTERVAL_MS: u64 = 41_250;

/// Accepts plain connections until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => {
                // Small frames go out at once, as from Discord's servers: with Nagle's
                // algorithm on, a write behind an unacknowledged one waits for the peer's
                // delayed ACK (about 40 ms), which would be charged to the bot.
                let _ = tcp.set_nodelay(true);
                tcp
            }
            Err(why) => {
                tracing::warn!(%why, "plain accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(answer(shared, request)) }
            });
            let connection = http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            if let Err(why) = connection.with_upgrades().await {
                tracing::debug!(%why, "plain connection ended with an error");
            }
        });
    }
}

fn plain(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

fn answer(shared: Arc<Shared>, mut request: hyper::Request<Incoming>) -> Response<Full<Bytes>> {
    let wants_upgrade = request
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if wants_upgrade {
        let Some(key) = request.headers().get("sec-websocket-key") else {
            return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
        };
        let accept = derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => run_session(shared, TokioIo::new(upgraded)).await,
                Err(why) => tracing::debug!(%why, "websocket upgrade failed"),
            }
        });
        let mut response = plain(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
        let headers = response.headers_mut();
        headers.insert(
            hyper::header::UPGRADE,
            "websocket".parse().expect("static header"),
        );
        headers.insert(
            hyper::header::CONNECTION,
            "Upgrade".parse().expect("static header"),
        );
        if let Ok(value) = accept.parse() {
            headers.insert("sec-websocket-accept", value);
        }
        return response;
    }

    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let ["attachments", id, ..] = segments.as_slice() {
        let file = id
            .parse::<u64>()
            .ok()
            .and_then(|id| shared.read(|w| w.state.files.get(&id).map(|f| f.bytes.clone())));
        if let Some(bytes) = file {
            return plain(StatusCode::OK, bytes);
        }
    }
    plain(StatusCode::NOT_FOUND, "not found")
}

/// What the reader loop does after one frame.
enum Next {
    Continue,
    Stop,
}

async fn run_session<S>(shared: Arc<Shared>, io: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let socket = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut sink, mut stream) = socket.split();
    let (tx, mut rx) = mpsc::unbounded_channel();

    let session_id = shared.write(|w| {
        let id = w.next_id();
        w.sessions.push(Session {
            id,
            tx: tx.clone(),
            ready: false,
            seq: 0,
        });
        id
    });
    tracing::debug!(session_id, "gateway session opened");
    let hello = json!({ "op": 10, "d": { "heartbeat_interval": HEARTBEAT_INTERVAL_MS }, "s": null, "t": null });
    let _ = tx.send(Outgoing::Text(hello.to_string()));

    let writer = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            match out {
                Outgoing::Text(text) => {
                    if sink.send(Frame::Text(text)).await.is_err() {
                        break;
                    }
                }
                Outgoing::Close(code, reason) => {
                    let frame = CloseFrame {
                        code: code.into(),
                        reason: reason.into(),
                    };
                    let _ = sink.send(Frame::Close(Some(frame))).await;
                    break;
                }
            }
        }
        let _ = sink.close().await;
    });

    while let Some(frame) = stream.next().await {
        let text = match frame {
            Ok(Frame::Text(text)) => text,
            Ok(Frame::Binary(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
            Ok(Frame::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        if let Next::Stop = on_frame(&shared, session_id, &tx, &text) {
            break;
        }
    }

    drop(tx);
    shared.write(|w| w.sessions.retain(|s| s.id != session_id));
    // The writer ends once every sender is gone, after flushing a close frame.
    let _ = writer.await;
    tracing::debug!(session_id, "gateway session closed");
}

fn close(tx: &mpsc::UnboundedSender<Outgoing>, code: u16, reason: &str) -> Next {
    let _ = tx.send(Outgoing::Close(code, reason.to_owned()));
    Next::Stop
}

fn on_frame(
    shared: &Shared,
    session_id: u64,
    tx: &mpsc::UnboundedSender<Outgoing>,
    text: &str,
) -> Next {
    let Ok(payload) = serde_json::from_str::<Value>(text) else {
        return close(tx, 4002, "Error while decoding payload.");
    };
    match payload.get("op").and_then(Value::as_u64) {
        Some(1) => {
            let _ = tx.send(Outgoing::Text(json!({ "op": 11, "d": null }).to_string()));
            Next::Continue
        }
        Some(2) => identify(shared, session_id, tx, &payload["d"]),
        Some(6) => {
            // Sessions do not survive here; serenity answers this with IDENTIFY.
            let _ = tx.send(Outgoing::Text(json!({ "op": 9, "d": false }).to_string()));
            Next::Continue
        }
        Some(3 | 4 | 8 | 31) => Next::Continue,
        _ => close(tx, 4001, "Unknown opcode."),
    }
}

fn identify(
    shared: &Shared,
    session_id: u64,
    tx: &mpsc::UnboundedSender<Outgoing>,
    d: &Value,
) -> Next {
    let token = d.get("token").and_then(Value::as_str).unwrap_or("");
    let token = token.strip_prefix("Bot ").unwrap_or(token);
    if token != shared.token {
        return close(tx, 4004, "Authentication failed.");
    }
    let shard = d.get("shard").filter(|s| s.is_array());
    shared.write(|w| {
        let secret = w.next_secret();
        let Some(session) = w.sessions.iter_mut().find(|s| s.id == session_id) else {
            return Next::Stop;
        };
        if session.ready {
            return close(tx, 4005, "Already authenticated.");
        }
        session.ready = true;
        session.seq = 1;
        let ready = payloads::ready(shared, &secret, shard);
        let frame = json!({ "op": 0, "s": 1, "t": "READY", "d": ready });
        let _ = session.tx.send(Outgoing::Text(frame.to_string()));
        Next::Continue
    })
}

/// Sends a dispatch to the newest ready session; false when there is none.
pub(crate) fn dispatch(world: &mut World, event: &str, d: Value) -> bool {
    let Some(session) = world.live_session() else {
        return false;
    };
    session.seq += 1;
    let frame = json!({ "op": 0, "s": session.seq, "t": event, "d": d });
    session.tx.send(Outgoing::Text(frame.to_string())).is_ok()
}

/// Whether some session could take a dispatch now.
pub(crate) fn has_live_session(world: &World) -> bool {
    world.sessions.iter().any(|s| s.ready && !s.tx.is_closed())
}

/// Closes every session with a close code, as a dropped connection would.
pub(crate) fn close_all(world: &mut World, code: u16) {
    for session in &world.sessions {
        let _ = session
            .tx
            .send(Outgoing::Close(code, "closed by the test".to_owned()));
    }
}
