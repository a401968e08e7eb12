//! Sources: where IdP users come from. Each source turns its own wire format into
//! [`SourceRead`]; only this module knows Okta, Graph or export formats. A read that fails at
//! any point returns an error and nothing partial, so that no run acts on an incomplete read.

pub mod entra;
pub mod file;
pub mod groups;
pub mod okta;
pub mod onelogin;

use std::sync::Arc;

use crate::config::{SecretError, SourceConfig};
use crate::model::{SourceRead, SourceUser};
use crate::state::{State, StateError};

/// Why a source could not be read; the run stops before any write.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source could not be read or parsed (names the file or URL).
    #[error("cannot read the source {location}: {message}")]
    Unreadable {
        /// The file or URL.
        location: String,
        /// What went wrong.
        message: String,
    },
    /// The configured source kind is not available in this build.
    #[error("{kind} is not available")]
    Unavailable {
        /// The kind.
        kind: String,
    },
    /// A secret the source needs is missing.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The state (cursors, cache) could not be read.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Reads the configured source: in full when `full` is set, when there is no state or no
/// cursor yet, or always for the file source (which has no change feed); else incrementally.
///
/// # Errors
/// [`SourceError`] when any part of the read fails.
pub async fn read(
    config: &SourceConfig,
    state: Option<&State>,
    full: bool,
) -> Result<SourceRead, SourceError> {
    match config {
        SourceConfig::File(file) => {
            let path = file.path.clone();
            let list_columns = file.list_columns.clone();
            tokio::task::spawn_blocking(move || file::read(&path, &list_columns))
                .await
                .map_err(|error| SourceError::Unreadable {
                    location: "file source".into(),
                    message: format!("the reading task failed: {error}"),
                })?
        }
        SourceConfig::Okta(okta) => okta::read(okta, state, full).await,
        SourceConfig::Entra(entra) => entra::read(entra, state, full).await,
        SourceConfig::OneLogin(onelogin) => onelogin::read(onelogin, state, full).await,
    }
}

/// Whether [`read`] with these arguments reads the whole directory: the file source always
/// does; Okta, Entra ID and OneLogin do when asked to, or when the state holds no cursor yet.
pub fn reads_full(config: &SourceConfig, state: Option<&State>, full: bool) -> bool {
    let has = |key: &str| {
        state
            .and_then(|state| state.meta(key).ok().flatten())
            .is_some()
    };
    match config {
        SourceConfig::File(_) => true,
        SourceConfig::Okta(_) => full || !has(okta::WATERMARK_KEY) || !has(okta::GROUP_NAMES_KEY),
        SourceConfig::Entra(entra) => {
            full || !has(entra::USERS_LINK_KEY)
                || !has(entra::GROUPS_LINK_KEY)
                || !state.is_some_and(|state| entra::cache_fits(entra, state))
        }
        SourceConfig::OneLogin(_) => full || !onelogin::has_cursors(state),
    }
}

/// Finds one user by IdP id, login or email (case-insensitive), with groups and manager
/// resolved, as an incremental read of that user alone (for `preview`).
///
/// # Errors
/// [`SourceError`] when the source cannot be read.
pub async fn read_one(
    config: &SourceConfig,
    state: Option<&State>,
    wanted: &str,
) -> Result<Option<SourceRead>, SourceError> {
    match config {
        SourceConfig::Okta(okta) => okta::read_one(okta, state, wanted).await,
        SourceConfig::Entra(entra) => entra::read_one(entra, state, wanted).await,
        SourceConfig::OneLogin(onelogin) => onelogin::read_one(onelogin, wanted).await,
        SourceConfig::File(_) => {
            let mut read = read(config, state, true).await?;
            let folded = wanted.to_lowercase();
            let found: Option<Arc<SourceUser>> = read
                .users
                .iter()
                .find(|user| {
                    user.id.0 == wanted
                        || user
                            .login
                            .as_deref()
                            .is_some_and(|l| l.to_lowercase() == folded)
                        || user
                            .email
                            .as_deref()
                            .is_some_and(|e| e.to_lowercase() == folded)
                })
                .cloned();
            Ok(found.map(|user| {
                read.users = vec![user];
                read.full = false;
                read.rejected.clear();
                read.commit = Default::default();
                read
            }))
        }
    }
}

/// Writes attributes back into the IdP (`[writeback]`).
#[derive(Debug, Clone)]
pub enum Writer {
    /// Okta: partial profile updates.
    Okta(okta::client::OktaClient),
    /// Entra ID: `PATCH /v1.0/users/{id}`.
    Entra(entra::client::GraphClient),
    /// OneLogin: `PUT /api/2/users/{id}` with `custom_attributes`.
    OneLogin(onelogin::client::OneLoginClient),
}

impl Writer {
    /// The writer for the configured source (reads its credentials now).
    ///
    /// # Errors
    /// [`SourceError`] when the source cannot be written to or its credentials are missing.
    pub fn new(config: &SourceConfig) -> Result<Writer, SourceError> {
        match config {
            SourceConfig::Okta(okta) => Ok(Writer::Okta(okta::client(okta)?)),
            SourceConfig::Entra(entra) => Ok(Writer::Entra(entra::client(entra)?)),
            SourceConfig::OneLogin(onelogin) => Ok(Writer::OneLogin(onelogin::client(onelogin)?)),
            SourceConfig::File(_) => Err(SourceError::Unavailable {
                kind: "file write-back".into(),
            }),
        }
    }

    /// Sets `attribute` of IdP user `idp_id` to `value`.
    ///
    /// # Errors
    /// A message naming what to fix in the IdP.
    pub async fn write(
        &self,
        idp_id: &crate::model::IdpId,
        attribute: &str,
        value: &str,
    ) -> Result<(), String> {
        match self {
            Writer::Okta(client) => okta::write_attribute(client, idp_id, attribute, value).await,
            Writer::Entra(client) => entra::write_attribute(client, idp_id, attribute, value).await,
            Writer::OneLogin(client) => {
                onelogin::write_attribute(client, idp_id, attribute, value).await
            }
        }
    }
}

/// Builds the source's credentials as a run would, without contacting anything: resolves the
/// secrets and parses the private key and the certificate (for `check-config`).
///
/// # Errors
/// [`SourceError::Secret`] when a secret is missing; [`SourceError::Unreadable`] naming the
/// configuration key whose key or certificate cannot be used.
pub fn check_credentials(config: &SourceConfig) -> Result<(), SourceError> {
    match config {
        SourceConfig::Okta(okta) => okta::client(okta).map(drop),
        SourceConfig::Entra(entra) => entra::client(entra).map(drop),
        SourceConfig::OneLogin(onelogin) => onelogin::client(onelogin).map(drop),
        SourceConfig::File(_) => Ok(()),
    }
}

/// Authenticates to the source and reads a little, for `check-config --connect`; returns a
/// one-line description of what it saw.
///
/// # Errors
/// [`SourceError`] when the source cannot be reached or read.
pub async fn check(config: &SourceConfig) -> Result<String, SourceError> {
    match config {
        SourceConfig::Okta(okta) => okta::check(okta).await,
        SourceConfig::Entra(entra) => entra::check(entra).await,
        SourceConfig::OneLogin(onelogin) => onelogin::check(onelogin).await,
        SourceConfig::File(_) => {
            let read = read(config, None, true).await?;
            Ok(format!(
                "read {} users ({} rejected)",
                read.users.len(),
                read.rejected.len()
            ))
        }
    }
}
