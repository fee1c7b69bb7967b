//! The HTTPS listener that plays `https://discord.com/api/v10`.
//!
//! Each request is read whole, parsed (JSON or multipart), checked against
//! the injected 429s and the bot token, routed, and recorded with the answer
//! it got. Every answer carries rate-limit headers that keep serenity's
//! ratelimiter content: a bucket that never runs dry unless a test injects a
//! 429.

use std::convert::Infallible;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::body;
use crate::interactions;
use crate::messages::{self, Call, Reply};
use crate::payloads;
use crate::rules::Failure;
use crate::state::{Attachment, Injection, Request, Shared, World};

/// Bodies above this are refused outright; Discord's own cap is far lower.
const MAX_BODY: usize = 256 * 1024 * 1024;

/// Accepts TLS connections until the task is aborted.
pub(crate) async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
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
                tracing::warn!(%why, "REST accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(tls) => tls,
                Err(why) => {
                    tracing::debug!(%why, "TLS handshake failed");
                    return;
                }
            };
            let service = service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared, request).await) }
            });
            if let Err(why) = http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%why, "REST connection ended with an error");
            }
        });
    }
}

/// What one request turned into, before it becomes an HTTP response.
struct Outcome {
    status: u16,
    body: Option<Value>,
    code: Option<u64>,
    retry_after: Option<f64>,
    global: bool,
}

impl From<Result<Reply, Failure>> for Outcome {
    fn from(result: Result<Reply, Failure>) -> Outcome {
        match result {
            Ok(reply) => Outcome {
                status: reply.status,
                body: reply.body,
                code: None,
                retry_after: None,
                global: false,
            },
            Err(failure) => Outcome {
                status: failure.status,
                body: Some(failure.body()),
                code: Some(failure.code),
                retry_after: None,
                global: false,
            },
        }
    }
}

async fn handle(shared: &Shared, request: hyper::Request<Incoming>) -> Response<Full<Bytes>> {
    let at = Instant::now();
    let method = request.method().as_str().to_owned();
    let full_path = request.uri().path().to_owned();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = header("authorization");
    let content_type = header("content-type");
    let path = full_path
        .strip_prefix("/api/v10")
        .unwrap_or(&full_path)
        .to_owned();

    let raw = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let outcome = Outcome::from(Err(Failure::too_large()));
            return finish(shared, &method, &path, Value::Null, Vec::new(), at, outcome);
        }
    };
    let (json, files) = match body::parse(content_type.as_deref(), &raw) {
        Ok(parsed) => (parsed.json, parsed.files),
        Err(failure) => {
            let text = Value::String(String::from_utf8_lossy(&raw).into_owned());
            return finish(
                shared,
                &method,
                &path,
                text,
                Vec::new(),
                at,
                Outcome::from(Err(failure)),
            );
        }
    };

    let route = format!("{method} {path}");
    let outcome = shared.write(|world| {
        if let Some(injection) = take_injection(world, &route) {
            return rate_limited(&injection);
        }
        if !full_path.starts_with("/api/v10/") {
            return Outcome::from(Err(Failure::unknown_route(&method, &full_path)));
        }
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let authorized = authorization.as_deref() == Some(&format!("Bot {}", shared.token));
        let call = Call {
            method: &method,
            body: &json,
            files: &files,
        };
        Outcome::from(route_request(shared, world, &call, &segments, authorized))
    });
    finish(shared, &method, &path, json, files, at, outcome)
}

fn take_injection(world: &mut World, route: &str) -> Option<Injection> {
    let index = world
        .injections
        .iter()
        .position(|i| i.times > 0 && route.starts_with(&i.prefix))?;
    let injection = world.injections[index].clone();
    world.injections[index].times -= 1;
    if world.injections[index].times == 0 {
        world.injections.remove(index);
    }
    Some(injection)
}

fn rate_limited(injection: &Injection) -> Outcome {
    let seconds = injection.retry_after.as_secs_f64();
    Outcome {
        status: 429,
        body: Some(json!({
            "message": "You are being rate limited.",
            "retry_after": seconds,
            "global": injection.global,
        })),
        code: None,
        retry_after: Some(seconds),
        global: injection.global,
    }
}

fn route_request(
    shared: &Shared,
    world: &mut World,
    call: &Call<'_>,
    segments: &[&str],
    authorized: bool,
) -> Result<Reply, Failure> {
    let Call {
        method,
        body: json,
        files,
    } = *call;
    // Interaction callbacks and webhooks authenticate by their token alone.
    match (method, segments) {
        ("POST", ["interactions", id, token, "callback"]) => {
            return interactions::callback(world, id, token, json, files);
        }
        (_, ["webhooks", application, token, rest @ ..]) => {
            return interactions::webhook(shared, world, call, application, token, rest)
                .unwrap_or_else(|| Err(Failure::unknown_route(method, &segments.join("/"))));
        }
        ("GET", ["gateway"]) => return Ok(Reply::json(json!({ "url": shared.gateway_url() }))),
        _ => {}
    }
    if !authorized {
        return Err(Failure::unauthorized());
    }
    let unknown = || Failure::unknown_route(method, &format!("/{}", segments.join("/")));
    match (method, segments) {
        ("GET", ["gateway", "bot"]) => Ok(Reply::json(payloads::gateway_bot(shared))),
        ("GET", ["users", "@me"]) => Ok(Reply::json(payloads::bot_user(shared))),
        ("GET", ["oauth2", "applications", "@me"]) => {
            Ok(Reply::json(payloads::application(shared)))
        }
        (_, ["applications", application, "commands", rest @ ..]) => {
            commands(shared, world, method, application, None, rest, json)
                .unwrap_or_else(|| Err(unknown()))
        }
        (_, ["applications", application, "guilds", guild, "commands", rest @ ..]) => {
            let Ok(guild_id) = guild.parse::<u64>() else {
                return Err(unknown());
            };
            commands(
                shared,
                world,
                method,
                application,
                Some(guild_id),
                rest,
                json,
            )
            .unwrap_or_else(|| Err(unknown()))
        }
        (_, ["channels", channel, "messages", rest @ ..]) => {
            messages::channel_route(shared, world, call, channel, rest)
                .unwrap_or_else(|| Err(unknown()))
        }
        _ => Err(unknown()),
    }
}

/// The global and guild command routes: list, bulk overwrite, create, get, edit, delete.
fn commands(
    shared: &Shared,
    world: &mut World,
    method: &str,
    application: &str,
    guild_id: Option<u64>,
    rest: &[&str],
    json: &Value,
) -> Option<Result<Reply, Failure>> {
    if application.parse::<u64>().ok() != Some(shared.application_id) {
        return Some(Err(Failure::unknown_application()));
    }
    let list_of = |world: &World| -> Vec<Value> {
        match guild_id {
            Some(g) => world
                .state
                .guild_commands
                .get(&g)
                .cloned()
                .unwrap_or_default(),
            None => world.state.global_commands.clone(),
        }
    };
    let store = |world: &mut World, list: Vec<Value>| match guild_id {
        Some(g) => {
            world.state.guild_commands.insert(g, list);
        }
        None => world.state.global_commands = list,
    };
    let id_of = |c: &Value| c.get("id").and_then(Value::as_str).map(str::to_owned);
    let name_of = |c: &Value| c.get("name").and_then(Value::as_str).map(str::to_owned);
    let not_array = || Failure::invalid_form("_root", "BASE_TYPE_ARRAY", "Must be an array.");

    let result = match (method, rest) {
        ("GET", []) => Ok(Reply::json(Value::Array(list_of(world)))),
        ("PUT", []) => match json.as_array() {
            None => Err(not_array()),
            Some(sent) if sent.len() > 100 => Err(Failure::invalid_form(
                "_root",
                "BASE_TYPE_MAX_LENGTH",
                "Must be 100 or fewer in length.",
            )),
            Some(sent) => {
                // Discord keeps the ids of commands whose names survive an overwrite.
                let old = list_of(world);
                let list: Vec<Value> = sent
                    .iter()
                    .map(|c| {
                        let kept = old
                            .iter()
                            .find(|o| name_of(o) == name_of(c))
                            .and_then(&id_of);
                        let id = kept
                            .and_then(|k| k.parse().ok())
                            .unwrap_or_else(|| world.next_id());
                        payloads::command(shared, c, id, guild_id)
                    })
                    .collect();
                store(world, list.clone());
                Ok(Reply::json(Value::Array(list)))
            }
        },
        ("POST", []) => {
            let mut list = list_of(world);
            let existing = list.iter().position(|o| name_of(o) == name_of(json));
            let id = existing
                .and_then(|i| id_of(&list[i]))
                .and_then(|k| k.parse().ok())
                .unwrap_or_else(|| world.next_id());
            let command = payloads::command(shared, json, id, guild_id);
            match existing {
                Some(i) => list[i] = command.clone(),
                None => list.push(command.clone()),
            }
            store(world, list);
            Ok(Reply {
                status: if existing.is_some() { 200 } else { 201 },
                body: Some(command),
            })
        }
        (_, [command_id]) => {
            let mut list = list_of(world);
            let Some(index) = list
                .iter()
                .position(|c| id_of(c).as_deref() == Some(*command_id))
            else {
                return Some(Err(Failure::invalid_form(
                    "command_id",
                    "UNKNOWN_APPLICATION_COMMAND",
                    "Unknown application command",
                )));
            };
            match method {
                "GET" => Ok(Reply::json(list[index].clone())),
                "PATCH" => {
                    let id = command_id.parse().unwrap_or(0);
                    let mut merged = list[index].clone();
                    if let (Some(target), Some(fields)) = (merged.as_object_mut(), json.as_object())
                    {
                        for (key, value) in fields {
                            target.insert(key.clone(), value.clone());
                        }
                    }
                    list[index] = payloads::command(shared, &merged, id, guild_id);
                    let updated = list[index].clone();
                    store(world, list);
                    Ok(Reply::json(updated))
                }
                "DELETE" => {
                    list.remove(index);
                    store(world, list);
                    Ok(Reply::no_content())
                }
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(result)
}

/// A bucket name per route shape, ids and tokens left out.
fn bucket(method: &str, path: &str) -> String {
    let shape: Vec<&str> = path
        .split('/')
        .map(|s| {
            if s.bytes().all(|b| b.is_ascii_digit()) || s.len() >= 32 {
                ":id"
            } else {
                s
            }
        })
        .collect();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (method, shape).hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn finish(
    shared: &Shared,
    method: &str,
    path: &str,
    body: Value,
    files: Vec<Attachment>,
    at: Instant,
    outcome: Outcome,
) -> Response<Full<Bytes>> {
    tracing::debug!(method, path, status = outcome.status, code = ?outcome.code, "REST request");
    shared.write(|world| {
        world.state.requests.push(Request {
            method: method.to_owned(),
            path: path.to_owned(),
            status: outcome.status,
            code: outcome.code,
            body,
            files,
            at,
            retry_after: outcome.retry_after,
        });
    });

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let (remaining, reset_after) = match outcome.retry_after {
        Some(seconds) => (0, seconds),
        None => (4, 1.0),
    };
    let mut builder = Response::builder()
        .status(outcome.status)
        .header("x-ratelimit-limit", "5")
        .header("x-ratelimit-remaining", remaining.to_string())
        .header("x-ratelimit-reset", format!("{:.3}", now + reset_after))
        .header("x-ratelimit-reset-after", format!("{reset_after:.3}"))
        .header("x-ratelimit-bucket", bucket(method, path));
    if let Some(seconds) = outcome.retry_after {
        builder = builder.header("retry-after", format!("{seconds}")).header(
            "x-ratelimit-scope",
            if outcome.global { "global" } else { "user" },
        );
        if outcome.global {
            builder = builder.header("x-ratelimit-global", "true");
        }
    }
    let bytes = match &outcome.body {
        Some(value) => {
            builder = builder.header("content-type", "application/json");
            Bytes::from(value.to_string())
        }
        None => Bytes::new(),
    };
    builder
        .body(Full::new(bytes))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
