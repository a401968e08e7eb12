//! Secrets in the configuration: given inline (discouraged), as `${ENV_VAR}`, or as a `*_file`
//! key. A [`SecretRef`] says where a secret lives and is resolved only by the command that needs
//! it; a resolved [`Secret`] never prints its value (`Debug` and `Display` show `***`).

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a secret comes from, as written in the configuration.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// The value itself, written in the file.
    Inline(Secret),
    /// `${NAME}`: the environment variable `NAME`.
    Env(String),
    /// A `*_file` key: the file's whole content, trailing newline removed.
    File(PathBuf),
}

/// A secret value. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Why a secret could not be resolved; names the configuration key, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The key is absent from the configuration.
    #[error("{key} is not set (give it inline, as ${{ENV_VAR}}, or as {key}_file)")]
    Missing {
        /// The configuration key, for example `target.token`.
        key: String,
    },
    /// The environment variable named by `${…}` is not set or empty.
    #[error("{key}: environment variable {var} is not set")]
    EnvUnset {
        /// The configuration key.
        key: String,
        /// The variable's name.
        var: String,
    },
    /// The secret file could not be read.
    #[error("{key}: cannot read secret file {}: {source}", path.display())]
    File {
        /// The configuration key (the `*_file` one).
        key: String,
        /// The path that was tried.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The secret resolved to an empty string.
    #[error("{key} is empty")]
    Empty {
        /// The configuration key.
        key: String,
    },
}

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret's value, for the one place that sends it (an `Authorization` header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Inline(_) => f.write_str("Inline(***)"),
            SecretRef::Env(name) => write!(f, "Env({name})"),
            SecretRef::File(path) => write!(f, "File({})", path.display()),
        }
    }
}

/// A secret setting: its configuration key and where the value lives, if anywhere.
#[derive(Debug, Clone)]
pub struct SecretSetting {
    /// The configuration key, for messages (`target.token`).
    pub key: String,
    /// Where the value lives; `None` when the configuration does not give it.
    pub source: Option<SecretRef>,
}

impl SecretSetting {
    /// Builds the setting from the inline key and the `*_file` key of one section.
    ///
    /// `inline` may be `${NAME}` (environment) or a literal; a relative `file` path is looked up
    /// in `$CREDENTIALS_DIRECTORY` first (systemd `LoadCredential=`), then next to the
    /// configuration file.
    ///
    /// # Errors
    /// Returns a message when both keys are given.
    pub fn from_keys(
        key: &str,
        inline: Option<&str>,
        file: Option<&str>,
        config_dir: &Path,
    ) -> Result<SecretSetting, String> {
        let source = match (inline, file) {
            (Some(_), Some(_)) => {
                return Err(format!("give either {key} or {key}_file, not both"));
            }
            (Some(text), None) => Some(parse_inline(text)),
            (None, Some(path)) => Some(SecretRef::File(locate_secret_file(path, config_dir))),
            (None, None) => None,
        };
        Ok(SecretSetting {
            key: key.to_owned(),
            source,
        })
    }

    /// Whether the value is written in the configuration file itself.
    pub fn is_inline(&self) -> bool {
        matches!(self.source, Some(SecretRef::Inline(_)))
    }

    /// Reads the secret now.
    ///
    /// # Errors
    /// [`SecretError`] naming the key when it is absent, unset, unreadable or empty.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let value = match &self.source {
            None => {
                return Err(SecretError::Missing {
                    key: self.key.clone(),
                });
            }
            Some(SecretRef::Inline(secret)) => secret.0.clone(),
            Some(SecretRef::Env(var)) => match std::env::var(var) {
                Ok(value) if !value.is_empty() => value,
                _ => {
                    return Err(SecretError::EnvUnset {
                        key: self.key.clone(),
                        var: var.clone(),
                    });
                }
            },
            Some(SecretRef::File(path)) => std::fs::read_to_string(path)
                .map_err(|source| SecretError::File {
                    key: format!("{}_file", self.key),
                    path: path.clone(),
                    source,
                })?
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        };
        if value.is_empty() {
            return Err(SecretError::Empty {
                key: self.key.clone(),
            });
        }
        // From now on no text leaving the process may hold it, in any encoding.
        crate::net::redact::register_secret(&value);
        Ok(Secret(value))
    }
}

fn parse_inline(text: &str) -> SecretRef {
    match text
        .strip_prefix("${")
        .and_then(|rest| rest.strip_suffix('}'))
    {
        Some(var) if !var.is_empty() && !var.contains(['{', '}']) => SecretRef::Env(var.to_owned()),
        _ => SecretRef::Inline(Secret(text.to_owned())),
    }
}

/// Where a relative `*_file` path points: `$CREDENTIALS_DIRECTORY` first (systemd
/// `LoadCredential=`), when the file is there, else next to the configuration file. Every
/// `*_file` key goes through here, certificates included.
pub fn locate_secret_file(path: &str, config_dir: &Path) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        return path.to_owned();
    }
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        let candidate = Path::new(&dir).join(path);
        if candidate.exists() {
            return candidate;
        }
    }
    config_dir.join(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let secret = Secret::new("hunter2-very-secret");
        assert!(!format!("{secret:?} {secret}").contains("hunter2"));
        let setting = SecretSetting::from_keys("t", Some("hunter2"), None, Path::new("."))
            .expect("one key given");
        assert!(!format!("{setting:?}").contains("hunter2"));
    }

    #[test]
    fn env_reference_is_recognised() {
        let setting = SecretSetting::from_keys(
            "target.token",
            Some("${ST_SYNC_TEST_SURELY_UNSET}"),
            None,
            Path::new("."),
        )
        .expect("one key given");
        let error = setting.resolve().expect_err("variable is unset");
        assert_eq!(
            error.to_string(),
            "target.token: environment variable ST_SYNC_TEST_SURELY_UNSET is not set"
        );
    }

    #[test]
    fn file_secret_is_trimmed_and_relative_to_config_dir() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("tok"), "abc123\n").expect("write");
        let setting = SecretSetting::from_keys("target.token", None, Some("tok"), dir.path())
            .expect("one key given");
        assert_eq!(setting.resolve().expect("readable").expose(), "abc123");
    }

    #[test]
    fn both_keys_is_an_error() {
        let error = SecretSetting::from_keys("target.token", Some("a"), Some("b"), Path::new("."))
            .expect_err("both given");
        assert_eq!(
            error,
            "give either target.token or target.token_file, not both"
        );
    }
}
