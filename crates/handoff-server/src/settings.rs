//! Configuration layering, shared by every entry point (`handoff serve` and the other commands, the Lambda
//! function): defaults → TOML file → `HANDOFF_*` environment variables → overrides (the command's flags).
//!
//! Nested keys use a double underscore in the environment: `HANDOFF_LIMITS__MAX_FILE_SIZE=1073741824`. Lists of
//! tables are indexed: `HANDOFF_AUTH__OIDC__0__ISSUER=…` is the first `[[auth.oidc]]` entry, which is how a
//! deployment without a configuration file (AWS Lambda) configures its identity provider. Lists of strings are
//! comma-separated (`HANDOFF_AUTH__ADMINS=alice,bob`, `HANDOFF_AUTH__OIDC__0__AUDIENCES=client-a,client-b`).

use std::path::Path;

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("reading the configuration")]
    Read(#[source] config::ConfigError),
    #[error("invalid configuration")]
    Invalid(#[source] config::ConfigError),
}

/// Layers the configuration from `file` (if any), the process environment and `overrides` (`("listen",
/// "0.0.0.0:8080")`, applied last).
pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Config, SettingsError> {
    load_from(file, std::env::vars(), overrides)
}

/// [`load`] with an explicit environment, for tests.
pub fn load_from(
    file: Option<&Path>,
    environment: impl IntoIterator<Item = (String, String)>,
    overrides: &[(&str, String)],
) -> Result<Config, SettingsError> {
    let mut builder = config::Config::builder();
    if let Some(file) = file {
        builder = builder.add_source(config::File::from(file).format(config::FileFormat::Toml).required(true));
    }
    let (keys, sections) = env_names();
    // Only names that configure the server: others that happen to start with `HANDOFF_` (a test's own settings,
    // `HANDOFF_CONFIG` itself) are left alone instead of failing `deny_unknown_fields`.
    let mut environment: config::Map<String, String> = environment
        .into_iter()
        .filter(|(k, _)| keys.iter().any(|n| n == k) || sections.iter().any(|s| k.starts_with(s.as_str())))
        .collect();
    // `config` reads `HANDOFF_AUTH__OIDC__0__NAME` as a table keyed "0", which no list deserialises from: names
    // with an index segment are set as paths with a subscript (`auth.oidc[0].name`) instead.
    let indexed: Vec<String> = environment
        .keys()
        .filter(|k| indexed_path(k).is_some())
        .cloned()
        .collect();
    let mut indexed_values = Vec::new();
    for name in indexed {
        if let (Some(path), Some(value)) = (indexed_path(&name), environment.remove(&name)) {
            indexed_values.push((path, value));
        }
    }
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
    for (path, value) in indexed_values {
        let is_list = LIST_KEYS.iter().any(|k| path.ends_with(&format!(".{k}")));
        builder = if is_list {
            let items: Vec<String> = value
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
            builder.set_override(path, items)
        } else {
            builder.set_override(path, value)
        }
        .map_err(SettingsError::Read)?;
    }
    for (key, value) in overrides {
        builder = builder
            .set_override(*key, value.as_str())
            .map_err(SettingsError::Read)?;
    }
    builder
        .build()
        .map_err(SettingsError::Read)?
        .try_deserialize::<Config>()
        .map_err(SettingsError::Invalid)
}

/// Keys inside indexed list entries that are themselves lists of strings (comma-separated in the environment).
const LIST_KEYS: &[&str] = &["audiences", "algorithms"];

/// `HANDOFF_AUTH__OIDC__0__ISSUER` → `auth.oidc[0].issuer`; `None` for a name without an index segment.
fn indexed_path(name: &str) -> Option<String> {
    let rest = name.strip_prefix("HANDOFF_")?;
    let mut path = String::new();
    let mut has_index = false;
    for segment in rest.split("__") {
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) && !path.is_empty() {
            path.push_str(&format!("[{segment}]"));
            has_index = true;
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment.to_ascii_lowercase());
        }
    }
    has_index.then_some(path)
}

/// The environment names that configure the server, derived from the shape of [`Config`] so that a new key or
/// section is configurable from the environment the moment it exists: `HANDOFF_<KEY>` for top-level values and
/// `HANDOFF_<SECTION>__` prefixes for sections.
fn env_names() -> (Vec<String>, Vec<String>) {
    let shape = serde_json::to_value(Config::default()).unwrap_or_default();
    let mut keys = Vec::new();
    let mut sections = Vec::new();
    if let Some(fields) = shape.as_object() {
        for (name, value) in fields {
            let upper = format!("HANDOFF_{}", name.to_ascii_uppercase());
            if value.is_object() {
                sections.push(format!("{upper}__"));
            } else {
                keys.push(upper);
            }
        }
    }
    (keys, sections)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::TokenUse;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn every_section_is_reachable_from_the_environment() {
        let (keys, sections) = env_names();
        for key in [
            "HANDOFF_LISTEN",
            "HANDOFF_DATA_DIR",
            "HANDOFF_DATABASE_URL",
            "HANDOFF_STORAGE_URL",
        ] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
        for section in [
            "HANDOFF_AUTH__",
            "HANDOFF_LIMITS__",
            "HANDOFF_TUS__",
            "HANDOFF_SHARING__",
        ] {
            assert!(
                sections.iter().any(|s| s == section),
                "{section} missing from {sections:?}"
            );
        }
        let config = load_from(None, env(&[("HANDOFF_TUS__LEASE_SECS", "2")]), &[]).unwrap();
        assert_eq!(config.tus.lease_secs, 2);
    }

    #[test]
    fn an_oidc_provider_is_configured_from_indexed_variables() {
        let config = load_from(
            None,
            env(&[
                ("HANDOFF_AUTH__OIDC__0__NAME", "cognito"),
                (
                    "HANDOFF_AUTH__OIDC__0__ISSUER",
                    "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Abc",
                ),
                ("HANDOFF_AUTH__OIDC__0__AUDIENCES", "client-a,client-b"),
                ("HANDOFF_AUTH__OIDC__0__TOKEN_USE", "access"),
                ("HANDOFF_AUTH__OIDC__0__USERNAME_CLAIM", "username"),
                ("HANDOFF_AUTH__OIDC__0__GROUPS_CLAIM", "cognito:groups"),
                ("HANDOFF_AUTH__OIDC__0__ADMIN_GROUP", "handoff-admins"),
                ("HANDOFF_AUTH__BUILTIN_ACCOUNTS", "false"),
                ("HANDOFF_DOWNLOADS__MODE", "redirect"),
                ("HANDOFF_UNRELATED_TEST_SETTING", "ignored"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(config.auth.oidc.len(), 1);
        let cognito = &config.auth.oidc[0];
        assert_eq!(cognito.name, "cognito");
        assert_eq!(cognito.audiences, ["client-a", "client-b"]);
        assert_eq!(cognito.token_use, TokenUse::Access);
        assert_eq!(cognito.groups_claim, "cognito:groups");
        assert_eq!(cognito.admin_group.as_deref(), Some("handoff-admins"));
        assert!(!config.auth.builtin_accounts);
        assert_eq!(config.downloads.mode, crate::config::DownloadMode::Redirect);
    }

    #[test]
    fn overrides_win_and_unknown_keys_are_refused() {
        let config = load_from(
            None,
            env(&[("HANDOFF_LISTEN", "127.0.0.1:1")]),
            &[("listen", "127.0.0.1:2".to_owned())],
        )
        .unwrap();
        assert_eq!(config.listen.port(), 2);
        let error = load_from(None, env(&[("HANDOFF_LIMITS__NO_SUCH_LIMIT", "1")]), &[]).unwrap_err();
        assert!(matches!(error, SettingsError::Invalid(_)), "{error:?}");
    }
}
