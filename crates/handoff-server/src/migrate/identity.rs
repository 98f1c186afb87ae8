//! Copying external identity links and API tokens: without them a provider's user would get a new, empty account
//! on the target (with a suffixed name), and scripts' API tokens would stop working.

use super::{MigrateError, PAGE, Stores, store};

impl Stores {
    /// Links and tokens of every account already copied; idempotent like the rest (present ones are skipped).
    pub(super) async fn copy_identities_and_api_tokens(&self) -> Result<(), MigrateError> {
        let (mut links, mut tokens) = (0u64, 0u64);
        let mut after = None;
        loop {
            let page = self
                .source_meta
                .users_page(after, PAGE)
                .await
                .map_err(store("reading the source's accounts"))?;
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            for user in &page {
                let link = self
                    .source_meta
                    .external_identity_of(user.id)
                    .await
                    .map_err(store(format!("reading the identity of account {}", user.id)))?;
                if let Some((issuer, subject)) = link {
                    let linked = self
                        .target_meta
                        .import_external_identity(&issuer, &subject, user.id)
                        .await
                        .map_err(store(format!("linking the identity of account {}", user.id)))?;
                    links += u64::from(linked);
                }
                let exported = self
                    .source_meta
                    .export_api_tokens(user.id)
                    .await
                    .map_err(store(format!("reading the API tokens of account {}", user.id)))?;
                for token in &exported {
                    let stored = self
                        .target_meta
                        .import_api_token(token)
                        .await
                        .map_err(store(format!("storing API token {}", token.record.id)))?;
                    tokens += u64::from(stored);
                }
            }
        }
        tracing::info!(links, tokens, "copied external identity links and API tokens");
        Ok(())
    }
}
