//! Configuration layering: defaults → TOML file (`--config`) → `HANDOFF_*` environment variables → flags.
//! Nested keys use a double underscore in the environment: `HANDOFF_LIMITS__MAX_FILE_SIZE=1073741824`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use handoff_server::Config;

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, env = "HANDOFF_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "HANDOFF_LISTEN", value_name = "ADDR")]
    listen: Option<String>,
    /// Data directory for the default SQLite database and local blobs [default: ./handoff-data].
    #[arg(long, env = "HANDOFF_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Metadata store: sqlite://PATH or postgres://… [default: a SQLite file in the data directory].
    #[arg(long, env = "HANDOFF_DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Blob store: file://DIR, s3://BUCKET/PREFIX?endpoint=…, or memory:// [default: a directory in the data
    /// directory].
    #[arg(long, env = "HANDOFF_STORAGE_URL", value_name = "URL", hide_env_values = true)]
    storage_url: Option<String>,
}

/// Environment variables that configure the server (top-level keys, and prefixes of nested sections). Others
/// that happen to start with `HANDOFF_` (a test's own settings, say) are not configuration and are left alone.
const ENV_KEYS: &[&str] = &[
    "HANDOFF_LISTEN",
    "HANDOFF_DATA_DIR",
    "HANDOFF_DATABASE_URL",
    "HANDOFF_STORAGE_URL",
    "HANDOFF_DEFAULT_VISIBILITY",
];
const ENV_SECTIONS: &[&str] = &[
    "HANDOFF_AUTH__",
    "HANDOFF_LIMITS__",
    "HANDOFF_MAINTENANCE__",
    "HANDOFF_DOWNLOADS__",
    "HANDOFF_QUOTAS__",
    "HANDOFF_RETENTION__",
    "HANDOFF_SHARING__",
    "HANDOFF_TUS__",
    "HANDOFF_CORS__",
];

impl ConfigArgs {
    pub fn load(&self) -> anyhow::Result<Config> {
        let mut builder = config::Config::builder();
        if let Some(file) = &self.config {
            builder = builder.add_source(
                config::File::from(file.as_path())
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let environment: config::Map<String, String> = std::env::vars()
            .filter(|(k, _)| ENV_KEYS.contains(&k.as_str()) || ENV_SECTIONS.iter().any(|s| k.starts_with(s)))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix("HANDOFF")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("auth.admins")
                .with_list_parse_key("cors.allowed_origins")
                .source(Some(environment)),
        );
        let flags = [
            ("listen", self.listen.clone()),
            ("data_dir", self.data_dir.as_ref().map(|d| d.display().to_string())),
            ("database_url", self.database_url.clone()),
            ("storage_url", self.storage_url.clone()),
        ];
        for (key, value) in flags {
            if let Some(value) = value {
                builder = builder.set_override(key, value)?;
            }
        }
        builder
            .build()
            .context("reading the configuration")?
            .try_deserialize::<Config>()
            .context("invalid configuration")
    }
}
