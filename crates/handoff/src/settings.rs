//! The configuration flags every command takes. The layering itself (defaults → TOML file (`--config`) →
//! `HANDOFF_*` environment variables → these flags) is `handoff_server::settings`, shared with the Lambda
//! function.

use std::path::PathBuf;

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

impl ConfigArgs {
    /// Layers the configuration (`handoff_server::settings`), with these flags as the last layer.
    pub fn load(&self) -> anyhow::Result<Config> {
        let flags = [
            ("listen", self.listen.clone()),
            ("data_dir", self.data_dir.as_ref().map(|d| d.display().to_string())),
            ("database_url", self.database_url.clone()),
            ("storage_url", self.storage_url.clone()),
        ];
        let overrides: Vec<(&str, String)> = flags
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| (key, v)))
            .collect();
        Ok(handoff_server::settings::load(self.config.as_deref(), &overrides)?)
    }
}
