//! What `--version` prints: the package version, the git commit the binary was built from
//! (recorded by `build.rs`; "unknown" without git) and the state format version it writes
//! ([`crate::state::FORMAT_VERSION`]).

use std::sync::OnceLock;

/// The git commit the binary was built from, or "unknown".
pub const GIT_COMMIT: &str = env!("SOCIALTALENT_SYNC_GIT_COMMIT");

/// `0.1.0 (commit 1a2b3c4d5e6f, state format 2)`.
pub fn text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        format!(
            "{} (commit {GIT_COMMIT}, state format {})",
            env!("CARGO_PKG_VERSION"),
            crate::state::FORMAT_VERSION
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_names_the_package_the_commit_and_the_state_format() {
        let text = super::text();
        assert!(text.starts_with(env!("CARGO_PKG_VERSION")), "{text}");
        assert!(
            text.contains(&format!("commit {}", super::GIT_COMMIT)),
            "{text}"
        );
        assert!(
            text.ends_with(&format!("state format {})", crate::state::FORMAT_VERSION)),
            "{text}"
        );
    }
}
