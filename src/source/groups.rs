//! `[source.*] groups`: which groups' membership is read, by name or glob (`SocialTalent*`,
//! `LP *`), matched case-insensitively. An empty list means every group.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// A compiled group filter.
#[derive(Debug, Clone)]
pub struct GroupFilter {
    set: Option<GlobSet>,
}

impl GroupFilter {
    /// Compiles the patterns.
    ///
    /// # Errors
    /// A message naming the pattern that is not a valid glob.
    pub fn new(patterns: &[String]) -> Result<GroupFilter, String> {
        Ok(GroupFilter {
            set: compile_globs(patterns, "group")?,
        })
    }

    /// Whether a group with this name is read.
    pub fn matches(&self, name: &str) -> bool {
        self.set.as_ref().is_none_or(|set| set.is_match(name))
    }

    /// Whether every group is read.
    pub fn is_everything(&self) -> bool {
        self.set.is_none()
    }
}

/// Compiles names or globs matched case-insensitively (`*` also matches `/`); `None` for an
/// empty list. `what` names the kind of pattern in messages ("group", "protect").
///
/// # Errors
/// A message naming the pattern that is not a valid glob.
pub fn compile_globs(patterns: &[String], what: &str) -> Result<Option<GlobSet>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = GlobBuilder::new(pattern)
            .case_insensitive(true)
            .literal_separator(false)
            .build()
            .map_err(|error| format!("{pattern:?} is not a valid {what} pattern: {error}"))?;
        builder.add(glob);
    }
    builder
        .build()
        .map(Some)
        .map_err(|error| format!("the {what} patterns do not compile: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_globs_match_case_insensitively() {
        let filter = GroupFilter::new(&["SocialTalent*".into(), "LP *".into(), "Admins".into()])
            .expect("valid");
        assert!(filter.matches("SocialTalent"));
        assert!(filter.matches("socialtalent admins"));
        assert!(filter.matches("LP Onboarding"));
        assert!(filter.matches("ADMINS"));
        assert!(!filter.matches("LPX"));
        assert!(!filter.matches("Everyone"));
        assert!(GroupFilter::new(&[]).expect("valid").matches("anything"));
    }

    #[test]
    fn a_bad_pattern_is_named() {
        let error = GroupFilter::new(&["LP [".into()]).expect_err("unclosed class");
        assert!(
            error.starts_with("\"LP [\" is not a valid group pattern"),
            "{error}"
        );
    }
}
