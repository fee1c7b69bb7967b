//! The one-shot migration both binaries offer (`huaxian migrate`, `huaxian-gateway
//! migrate`): the `migrate` service of the compose file and the Kubernetes Job run it
//! before the gateway and the workers start.

use std::path::Path;

use huaxian_store::Store;
use serde::Deserialize;

use crate::{DatabaseSettings, SettingsError};

/// The part of the configuration a migration reads; every other section may be absent.
#[derive(Debug, Deserialize)]
struct Settings {
    database: DatabaseSettings,
}

/// Why the migration did not run.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("[database] url")]
    Url(#[source] SettingsError),
    #[error("migrating the database")]
    Store(#[from] huaxian_store::StoreError),
    #[error("starting the async runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// Applies the pending migrations to the database `[database] url` names, and says what it
/// did on stdout.
pub fn migrate(file: Option<&Path>) -> Result<(), MigrateError> {
    let settings: Settings = crate::load(file)?;
    let url = settings.database.url.reveal().map_err(MigrateError::Url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let applied = runtime.block_on(Store::migrate(&url))?;
    if applied.is_empty() {
        println!("migrate: the database is up to date");
    }
    for (version, description) in &applied {
        println!("migrate: applied {version} {description}");
    }
    Ok(())
}
