//! The HTTP endpoint every service exposes: `/metrics` for Prometheus, and `/healthz` and
//! `/readyz` for orchestrators (both report the service's [`Health`]: a worker is healthy
//! once its models are loaded, a gateway once Discord has sent READY).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tracing::warn;

/// Says whether the service is fit to serve, and if not, why.
pub type Health = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
struct Endpoint {
    registry: Registry,
    health: Health,
}

/// Serves `/metrics` and `/healthz` on `addr` until the task is dropped. Returns the bound
/// address (useful with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    health: Health,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(healthz))
        .with_state(Endpoint { registry, health });
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            warn!(%error, "metrics endpoint stopped");
        }
    });
    Ok((bound, task))
}

async fn metrics(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&endpoint.registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            error.to_string().into_bytes(),
        ),
    }
}

async fn healthz(State(endpoint): State<Endpoint>) -> impl IntoResponse {
    match (endpoint.health)() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}
