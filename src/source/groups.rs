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
        if patterns.is_empty() {
            return Ok(GroupFilter { set: None });
        }
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let glob = GlobBuilder::new(pattern)
                .case_insensitive(true)
                .literal_separator(false)
                .build()
                .map_err(|error| format!("{pattern:?} is not a valid group pattern: {error}"))?;
            builder.add(glob);
        }
        let set = builder
            .build()
            .map_err(|error| format!("the group patterns do not compile: {error}"))?;
        Ok(GroupFilter { set: Some(set) })
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
