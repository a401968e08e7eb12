//! Sources: where IdP users come from. Each source turns its own wire format into
//! [`SourceRead`]; only this module knows Okta, Graph or export formats. A read that fails at
//! any point returns an error and nothing partial, so that no run acts on an incomplete read.

pub mod file;

use crate::config::SourceConfig;
use crate::model::SourceRead;

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
    #[error(
        "the {kind} source is not available in this version of socialtalent-sync; use kind = \"file\""
    )]
    Unavailable {
        /// The kind.
        kind: String,
    },
}

/// Reads the configured source. The file source has no change feed, so it always reads in full.
///
/// # Errors
/// [`SourceError`] when any part of the read fails.
pub async fn read(config: &SourceConfig) -> Result<SourceRead, SourceError> {
    match config {
        SourceConfig::File(file) => {
            let path = file.path.clone();
            tokio::task::spawn_blocking(move || file::read(&path))
                .await
                .map_err(|error| SourceError::Unreadable {
                    location: "file source".into(),
                    message: format!("the reading task failed: {error}"),
                })?
        }
        other => Err(SourceError::Unavailable {
            kind: other.kind().to_string(),
        }),
    }
}
