//! Configuration: one TOML file, then environment overrides.
//!
//! A key `a.b` of the file is overridden by the variable `HUAXIAN__A__B` (double
//! underscores between levels), so containers can change any setting without a file. A
//! secret may be written inline, or as `{ file = "/run/secrets/name" }` to read it from a
//! file (Docker and Kubernetes secrets); either way it never appears in logs or `Debug`
//! output.

use std::fmt;
use std::path::{Path, PathBuf};

use huaxian_store::Caps;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// What the configuration library said, with the file it read, if any.
    #[error("configuration: {0}")]
    Parse(String),
    // Causes are in the messages, not also `source()`, so a printed chain says them once.
    #[error("configuration: cannot read the secret file {}: {error}", path.display())]
    SecretFile {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("configuration: the configuration file {} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("configuration: cannot read {}: {error}", path.display())]
    Unreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "configuration: unknown key {} (from the file, or the environment as {}); check its \
         spelling against deploy/huaxian.example.toml",
        keys.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "),
        keys.iter().map(|k| environment_name(k)).collect::<Vec<_>>().join(", ")
    )]
    Unknown { keys: Vec<String> },
}

/// The sections of the one configuration file. A service reads some of them, and skips the
/// others whole (a gateway has no use for `[worker]`); an unknown key inside a section it
/// reads, or an unknown section, is a mistake worth stopping for.
pub const SECTIONS: &[&str] = &[
    "database", "redis", "blob", "caps", "worker", "prompt", "discord", "gateway",
];

/// The keys holding lists of plain values, which the environment gives comma-separated.
pub const LIST_KEYS: &[&str] = &[
    "prompt.samplers",
    "prompt.models",
    "discord.admin_users",
    "discord.admin_roles",
    "discord.attachment_hosts",
];

/// The environment variable that sets `key` (`worker.max_batch` → `HUAXIAN__WORKER__MAX_BATCH`).
pub fn environment_name(key: &str) -> String {
    format!("HUAXIAN__{}", key.replace('.', "__").to_uppercase())
}

/// Reads `file` (when given) and the `HUAXIAN__…` environment into `T`.
pub fn load<T: DeserializeOwned>(file: Option<&Path>) -> Result<T, SettingsError> {
    let mut builder = config::Config::builder();
    // Where the library's messages came from; it does not say so itself.
    let origin = match file {
        Some(file) => {
            if !file.exists() {
                return Err(SettingsError::Missing(file.to_path_buf()));
            }
            let text =
                std::fs::read_to_string(file).map_err(|error| SettingsError::Unreadable {
                    path: file.to_path_buf(),
                    error,
                })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
            format!("{}: ", file.display())
        }
        None => String::new(),
    };
    let parse = |error: config::ConfigError| {
        let hint = if file.is_none() {
            " (no configuration file was given: pass --config FILE or set HUAXIAN_CONFIG)"
        } else {
            ""
        };
        SettingsError::Parse(format!("{origin}{error}{hint}"))
    };
    let mut environment = config::Environment::with_prefix("HUAXIAN")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .list_separator(",");
    // Lists from the environment are comma-separated: HUAXIAN__DISCORD__ADMIN_USERS=1,2.
    for key in LIST_KEYS {
        environment = environment.with_list_parse_key(key);
    }
    let config = builder.add_source(environment).build().map_err(parse)?;
    let mut unknown = Vec::new();
    let settings = serde_ignored::deserialize(config, |path| {
        let key = path.to_string();
        if key.contains('.') || !SECTIONS.contains(&key.as_str()) {
            unknown.push(key);
        }
    })
    .map_err(parse)?;
    if !unknown.is_empty() {
        return Err(SettingsError::Unknown { keys: unknown });
    }
    Ok(settings)
}

/// A secret value: a password, a token, a URL with credentials. Shown as `***`.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum Secret {
    /// Written in the configuration itself.
    Inline(String),
    /// Read from this file, trailing whitespace removed.
    File { file: PathBuf },
}

impl Secret {
    /// The value, reading it from its file if it lives in one.
    pub fn reveal(&self) -> Result<String, SettingsError> {
        match self {
            Secret::Inline(value) => Ok(value.clone()),
            Secret::File { file } => {
                let value =
                    std::fs::read_to_string(file).map_err(|error| SettingsError::SecretFile {
                        path: file.clone(),
                        error,
                    })?;
                let value = value.trim_end();
                if value.is_empty() {
                    return Err(SettingsError::SecretFile {
                        path: file.clone(),
                        error: std::io::Error::new(std::io::ErrorKind::InvalidData, "it is empty"),
                    });
                }
                Ok(value.to_string())
            }
        }
    }
}

/// Serialized as `***`, so a settings dump never carries it.
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Inline(_) => f.write_str("***"),
            Secret::File { file } => write!(f, "*** (from {})", file.display()),
        }
    }
}

/// `[database]`: the Postgres that keeps users, jobs and quotas.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct DatabaseSettings {
    /// `postgres://user:password@host:port/db`.
    pub url: Secret,
    /// Connections in the pool.
    #[serde(default = "default_connections")]
    pub max_connections: u32,
}

impl DatabaseSettings {
    /// Connects to the database, applying pending migrations, with `caps` enforced. The
    /// error names the key to change: the URL's secret, or the server it points at.
    pub async fn connect(
        &self,
        caps: huaxian_store::Caps,
    ) -> Result<huaxian_store::Store, DatabaseError> {
        let url = self.url.reveal().map_err(DatabaseError::Url)?;
        huaxian_store::Store::connect(&url, self.max_connections, caps)
            .await
            .map_err(DatabaseError::Store)
    }
}

/// Why [`DatabaseSettings::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("[database] url")]
    Url(#[source] SettingsError),
    // The store's connection errors already say "check [database] url".
    #[error(transparent)]
    Store(huaxian_store::StoreError),
}

/// `[redis]`: the Redis that carries dispatch and events.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct RedisSettings {
    /// `redis://[:password@]host:port[/db]`.
    pub url: Secret,
    /// Prefix of every key, so deployments can share one Redis.
    #[serde(default = "default_prefix")]
    pub prefix: String,
}

/// `[blob]`: where images are stored. Workers write results there and read the images
/// users gave; the gateway writes those and reads results.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct BlobSettings {
    /// A folder, `file:///dir`, or `s3://bucket/prefix`; the same for every service.
    pub url: String,
    /// Largest input image (blend inputs, image prompts) a user may give and a worker
    /// reads, in bytes.
    pub max_input_bytes: u64,
}

impl Default for BlobSettings {
    fn default() -> Self {
        Self {
            url: "data/blobs".into(),
            max_input_bytes: 25 << 20,
        }
    }
}

/// `[caps]`: per-user and per-guild limits, the fast-lane quota and the retry policy. Every
/// service reads the same section, so the gateway and the workers enforce the same caps.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default)]
pub struct CapsSettings {
    /// Jobs one user may have running at once.
    pub running_per_user: i64,
    /// Jobs one user may have queued at once.
    pub queued_per_user: i64,
    /// Jobs one guild may have running at once, unless the guild sets its own.
    pub running_per_guild: i64,
    /// Jobs one guild may have queued at once, unless the guild sets its own.
    pub queued_per_guild: i64,
    /// Commands one user may issue per minute.
    pub commands_per_minute: i64,
    /// Images one user may make per UTC day.
    pub daily_images: i64,
    /// Fast-lane GPU seconds granted per period.
    pub fast_seconds_per_period: i64,
    /// Length of a quota period, in days.
    pub period_days: i64,
    /// Attempts a job gets before it fails for good.
    pub max_attempts: i32,
    /// Seconds before the first retry; doubled for each further one.
    pub retry_backoff_s: f64,
}

impl Default for CapsSettings {
    fn default() -> Self {
        let caps = Caps::default();
        Self {
            running_per_user: caps.running_per_user,
            queued_per_user: caps.queued_per_user,
            running_per_guild: caps.running_per_guild,
            queued_per_guild: caps.queued_per_guild,
            commands_per_minute: caps.commands_per_minute,
            daily_images: caps.daily_images,
            fast_seconds_per_period: caps.fast_ms_per_period / 1000,
            period_days: caps.period.num_days(),
            max_attempts: caps.max_attempts,
            retry_backoff_s: caps.retry_backoff.num_milliseconds() as f64 / 1000.0,
        }
    }
}

impl CapsSettings {
    /// The caps the store enforces.
    pub fn caps(&self) -> Caps {
        Caps {
            running_per_user: self.running_per_user,
            queued_per_user: self.queued_per_user,
            running_per_guild: self.running_per_guild,
            queued_per_guild: self.queued_per_guild,
            commands_per_minute: self.commands_per_minute,
            daily_images: self.daily_images,
            fast_ms_per_period: self.fast_seconds_per_period.saturating_mul(1000),
            period: chrono::Duration::days(self.period_days.max(1)),
            max_attempts: self.max_attempts.max(1),
            retry_backoff: chrono::Duration::milliseconds(
                (self.retry_backoff_s.max(0.0) * 1000.0) as i64,
            ),
        }
    }
}

fn default_connections() -> u32 {
    8
}

fn default_prefix() -> String {
    "huaxian".into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        database: DatabaseSettings,
        redis: RedisSettings,
    }

    #[test]
    fn file_secrets_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("db");
        std::fs::write(&secret, "postgres://u:hunter2@db/huaxian\n").unwrap();
        let file = dir.path().join("huaxian.toml");
        std::fs::write(
            &file,
            format!(
                "[database]\nurl = {{ file = {:?} }}\n[redis]\nurl = \"redis://r\"\n",
                secret.display().to_string()
            ),
        )
        .unwrap();
        let sample: Sample = load(Some(&file)).unwrap();
        assert_eq!(
            sample.database.url.reveal().unwrap(),
            "postgres://u:hunter2@db/huaxian"
        );
        assert_eq!(sample.database.max_connections, 8);
        assert_eq!(sample.redis.prefix, "huaxian");
        let shown = format!("{sample:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"));

        // The only test that touches the environment, so no other test sees the variable.
        std::env::set_var("HUAXIAN__REDIS__PREFIX", "staging");
        let overridden: Result<Sample, _> = load(Some(&file));
        std::env::remove_var("HUAXIAN__REDIS__PREFIX");
        assert_eq!(overridden.unwrap().redis.prefix, "staging");
    }

    #[test]
    fn unknown_keys_are_refused_but_other_services_sections_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("huaxian.toml");
        let base = "[database]\nurl = \"postgres://db\"\n[redis]\nurl = \"redis://r\"\n";

        // The worker's section, read by another service: skipped.
        std::fs::write(&file, format!("{base}[worker]\nmax_batch = 4\n")).unwrap();
        load::<Sample>(Some(&file)).unwrap();

        // A misspelt key in a section this service reads.
        std::fs::write(&file, format!("{base}prefx = \"x\"\n")).unwrap();
        let error = load::<Sample>(Some(&file)).unwrap_err().to_string();
        assert!(error.contains("`redis.prefx`"), "{error}");
        assert!(error.contains("HUAXIAN__REDIS__PREFX"), "{error}");

        // A section no service has.
        std::fs::write(&file, format!("{base}[gatway]\nconsumer = \"g\"\n")).unwrap();
        let error = load::<Sample>(Some(&file)).unwrap_err().to_string();
        assert!(error.contains("`gatway`"), "{error}");
    }

    #[derive(Debug, Deserialize)]
    struct Lists {
        discord: ListSection,
    }

    #[derive(Debug, Deserialize)]
    struct ListSection {
        admin_users: Vec<u64>,
        attachment_hosts: Vec<String>,
    }

    #[test]
    fn lists_come_comma_separated_from_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("huaxian.toml");
        std::fs::write(
            &file,
            "[discord]\nadmin_users = [1]\nattachment_hosts = [\"a\"]\n",
        )
        .unwrap();
        // The only test that sets these variables.
        std::env::set_var("HUAXIAN__DISCORD__ADMIN_USERS", "12,34");
        std::env::set_var("HUAXIAN__DISCORD__ATTACHMENT_HOSTS", "cdn.example");
        let lists: Result<Lists, _> = load(Some(&file));
        std::env::remove_var("HUAXIAN__DISCORD__ADMIN_USERS");
        std::env::remove_var("HUAXIAN__DISCORD__ATTACHMENT_HOSTS");
        let lists = lists.unwrap();
        assert_eq!(lists.discord.admin_users, [12, 34]);
        assert_eq!(lists.discord.attachment_hosts, ["cdn.example"]);
    }

    #[test]
    fn errors_say_which_file_or_that_there_was_none() {
        let error = load::<Sample>(None).unwrap_err().to_string();
        assert!(error.contains("missing configuration field"), "{error}");
        assert!(error.contains("--config"), "{error}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("huaxian.toml");
        std::fs::write(&file, "[database\nurl = 1\n").unwrap();
        let error = load::<Sample>(Some(&file)).unwrap_err().to_string();
        assert!(error.contains(&file.display().to_string()), "{error}");

        let empty = dir.path().join("empty_secret");
        std::fs::write(&empty, "\n").unwrap();
        let error = Secret::File { file: empty }
            .reveal()
            .unwrap_err()
            .to_string();
        assert!(error.contains("empty"), "{error}");
    }

    #[test]
    fn missing_file_is_named() {
        let error = load::<Sample>(Some(Path::new("/nonexistent/huaxian.toml"))).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/huaxian.toml"),
            "{error}"
        );
    }

    #[test]
    fn missing_secret_file_is_named() {
        let secret = Secret::File {
            file: "/nonexistent/secret".into(),
        };
        let error = secret.reveal().unwrap_err();
        assert!(error.to_string().contains("/nonexistent/secret"), "{error}");
    }
}
