//! What huaxian's services (the gateway and the workers) share: configuration from one TOML
//! file with environment overrides, secrets that never print, the blob store that holds
//! images, and the HTTP endpoint for Prometheus and health checks.
//!
//! Nothing here knows about tensors or Discord.

pub mod blob;
pub mod http;
mod migrate;
pub mod settings;
mod signal;

pub use blob::{BlobError, BlobStore};
pub use http::{serve, Health};
pub use migrate::{migrate, MigrateError};
pub use settings::{
    load, BlobSettings, CapsSettings, DatabaseError, DatabaseSettings, RedisSettings, Secret,
    SettingsError,
};
pub use signal::wait_for_signal;
