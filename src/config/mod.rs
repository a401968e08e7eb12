//! The configuration file (SPEC §4) in two stages: [`raw`] is the TOML as written (serde, unknown
//! keys rejected), and [`Config`] is the validated form — URLs checked, schedules parsed, secrets
//! located (not read), and the mapping compiled. Every error names the file, the key path and,
//! where known, the line and column.

mod raw;
pub mod secret;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use secret::{Secret, SecretError, SecretSetting};

use crate::mapping::{MappingSpec, RuleSpec};
use crate::model::SourceKind;

/// The default configuration path when neither `--config` nor `$SOCIALTALENT_SYNC_CONFIG` is set.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/socialtalent-sync/config.toml";

/// The default SocialTalent extension schema URN.
pub const DEFAULT_EXTENSION_SCHEMA: &str =
    "urn:ietf:params:scim:schemas:extension:socialtalent:2.0:User";

/// A configuration problem: where it is and what is wrong; with the other problems found in the
/// same pass, if any (a file is checked whole, not one problem per run).
#[derive(Debug)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// The key path, for example `target.base_url` or `mapping.role.rules[1].when`.
    pub key: String,
    /// Line and column (1-based), when known.
    pub location: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
    /// The other problems found with this one (each without further `more`).
    pub more: Vec<ConfigError>,
}

impl ConfigError {
    /// One problem.
    fn one(
        file: &Path,
        key: impl Into<String>,
        location: Option<(usize, usize)>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: file.to_owned(),
            key: key.into(),
            location,
            message: message.into(),
            more: Vec::new(),
        }
    }

    /// The first of `problems`, carrying the others; `None` when there are none.
    fn all(problems: Vec<ConfigError>) -> Option<ConfigError> {
        let mut problems = problems.into_iter().flat_map(ConfigError::into_problems);
        let mut first = problems.next()?;
        first.more = problems.collect();
        Some(first)
    }

    /// This problem and the others found with it, each on its own.
    pub fn into_problems(mut self) -> Vec<ConfigError> {
        let more = std::mem::take(&mut self.more);
        let mut problems = vec![self];
        problems.extend(more.into_iter().flat_map(ConfigError::into_problems));
        problems
    }

    /// How many problems this error holds (1 and the others found with it).
    pub fn count(&self) -> usize {
        1 + self.more.len()
    }

    fn fmt_one(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.key)?;
        if let Some((line, column)) = self.location {
            write!(f, " (line {line}, column {column})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: ", self.file.display())?;
        self.fmt_one(f)?;
        for other in &self.more {
            write!(f, "\n  {}: ", other.file.display())?;
            other.fmt_one(f)?;
        }
        if !self.more.is_empty() {
            write!(f, "\n{} problems in {}", self.count(), self.file.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub file: PathBuf,
    /// `[source]`.
    pub source: SourceConfig,
    /// `[target]`.
    pub target: TargetConfig,
    /// `[schedule]`.
    pub schedule: ScheduleConfig,
    /// `[state]`.
    pub state: StateConfig,
    /// `[safety]`.
    pub safety: SafetyConfig,
    /// `[reconcile]`.
    pub reconcile: ReconcileConfig,
    /// `[writeback]`, when configured.
    pub writeback: Option<WritebackConfig>,
    /// `[observability]`.
    pub observability: ObservabilityConfig,
    /// `[scope]` and `[mapping]`, compiled.
    pub mapping: Arc<crate::mapping::Mapper>,
}

/// `[source]`: which IdP and how to reach it.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// `kind = "file"`.
    File(FileSourceConfig),
    /// `kind = "okta"`.
    Okta(OktaConfig),
    /// `kind = "entra"`.
    Entra(EntraConfig),
    /// `kind = "onelogin"`.
    OneLogin(OneLoginConfig),
}

impl SourceConfig {
    /// The kind of source.
    pub fn kind(&self) -> SourceKind {
        match self {
            SourceConfig::File(_) => SourceKind::File,
            SourceConfig::Okta(_) => SourceKind::Okta,
            SourceConfig::Entra(_) => SourceKind::Entra,
            SourceConfig::OneLogin(_) => SourceKind::OneLogin,
        }
    }
}

/// `[source.file]`.
#[derive(Debug, Clone)]
pub struct FileSourceConfig {
    /// The export, resolved against the configuration file's directory.
    pub path: PathBuf,
    /// CSV columns whose cells are lists separated by `;` (`groups` always is).
    pub list_columns: Vec<String>,
}

/// `[source.okta]`.
#[derive(Debug, Clone)]
pub struct OktaConfig {
    /// The org URL, for example `https://example.okta.com`.
    pub org_url: url::Url,
    /// The API token (`SSWS`), when used.
    pub token: SecretSetting,
    /// The OAuth service app's client id, when used instead of a token.
    pub client_id: Option<String>,
    /// The service app's private key (PEM), when used.
    pub private_key: SecretSetting,
    /// OAuth scopes to ask for.
    pub scopes: Vec<String>,
    /// Whether SUSPENDED users count as active.
    pub suspended_is_active: bool,
    /// Group names or globs whose membership is read; empty means all.
    pub groups: Vec<String>,
}

/// `[source.entra]`.
#[derive(Debug, Clone)]
pub struct EntraConfig {
    /// The directory (tenant) id.
    pub tenant_id: String,
    /// The application (client) id.
    pub client_id: String,
    /// The client secret, when used.
    pub client_secret: SecretSetting,
    /// The certificate (PEM), when used instead of a secret.
    pub certificate_file: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub private_key: SecretSetting,
    /// Properties added to `$select`.
    pub extra_attributes: Vec<String>,
    /// Group names or globs whose membership is read; empty means all.
    pub groups: Vec<String>,
    /// Whether membership is transitive: a user is in every group above its direct groups
    /// through any chain of child groups (default), or in its direct groups only.
    pub nested_groups: bool,
    /// Microsoft Graph's base URL.
    pub graph_url: url::Url,
    /// The identity platform's base URL.
    pub login_url: url::Url,
}

/// `[source.onelogin]`.
#[derive(Debug, Clone)]
pub struct OneLoginConfig {
    /// The account's API URL, for example `https://example.onelogin.com`.
    pub api_url: url::Url,
    /// The API credential's client id.
    pub client_id: String,
    /// The API credential's client secret.
    pub client_secret: SecretSetting,
    /// Role and group names or globs read into `user.groups`; empty means all.
    pub groups: Vec<String>,
    /// Whether status 2 (suspended) counts as active.
    pub suspended_is_active: bool,
    /// Whether status 0 (unactivated) counts as active.
    pub unactivated_is_active: bool,
    /// The custom attribute (short name) read as `user.employee_id`, if any.
    pub employee_id_attribute: Option<String>,
}

/// How updates are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateWith {
    /// `PUT /Users/{id}` with the full document.
    Put,
    /// `PATCH /Users/{id}` with one operation per changed attribute.
    Patch,
}

/// How deactivations are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeactivateWith {
    /// `DELETE /Users/{id}`.
    Delete,
    /// `PATCH /Users/{id}` with `active: false`.
    Patch,
}

/// `[target]`: SocialTalent's SCIM endpoint.
#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// The SCIM base URL (without a trailing slash).
    pub base_url: url::Url,
    /// The bearer token.
    pub token: SecretSetting,
    /// The extension schema URN; empty sends extension attributes at the top level.
    pub extension_schema: String,
    /// How updates are sent.
    pub update_with: UpdateWith,
    /// How deactivations are sent.
    pub deactivate_with: DeactivateWith,
    /// Requests per second, retries included.
    pub requests_per_second: f64,
    /// How many requests may start at once after a quiet period.
    pub burst: u32,
    /// Requests in flight at once.
    pub max_in_flight: usize,
    /// The timeout of one request.
    pub timeout: Duration,
    /// Retries of one request (429, 5xx, transport errors).
    pub max_retries: u32,
}

/// `[schedule]` for `run`.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// Incremental runs.
    pub cron: crate::schedule::Cron,
    /// Full reconciliations.
    pub full_cron: crate::schedule::Cron,
    /// The time zone the expressions are read in.
    pub timezone: chrono_tz::Tz,
}

/// `[state]`.
#[derive(Debug, Clone)]
pub struct StateConfig {
    /// The state directory.
    pub path: PathBuf,
    /// Whether the configuration names it (`[state] path` or `$STATE_DIRECTORY`); when it does
    /// not, the path is the fallback `./socialtalent-sync-state`, and a command that would
    /// create a new empty state there asks for `--new-state` first.
    pub named: bool,
}

/// `[safety]`.
#[derive(Debug, Clone)]
pub struct SafetyConfig {
    /// A run may deactivate this many users…
    pub max_deactivations: usize,
    /// …or this share (percent) of the active users in the state, if that is more.
    pub max_deactivation_percent: f64,
    /// Consecutive failed runs before a user is quarantined.
    pub failure_quarantine_after: u32,
    /// `protect`: accounts never written to, adopted or deactivated.
    pub protect: Protect,
}

/// `[safety] protect`: SocialTalent accounts the tool never touches (its own support users, a
/// break-glass admin), by userName, as names or globs matched case-insensitively.
#[derive(Debug, Clone, Default)]
pub struct Protect {
    set: Option<globset::GlobSet>,
}

impl Protect {
    /// Compiles the patterns.
    ///
    /// # Errors
    /// A message naming the pattern that is not a valid glob.
    pub fn new(patterns: &[String]) -> Result<Protect, String> {
        Ok(Protect {
            set: crate::source::groups::compile_globs(patterns, "protect")?,
        })
    }

    /// Whether the account with this userName is protected.
    pub fn covers(&self, user_name: &str) -> bool {
        self.set.as_ref().is_some_and(|set| set.is_match(user_name))
    }
}

/// What to do with drifted values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriftPolicy {
    /// Push our values again.
    Repair,
    /// List the drift only.
    Report,
}

/// What to do with orphaned SocialTalent accounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanPolicy {
    /// List them only.
    Report,
    /// Deactivate them (within the safety limits).
    Deactivate,
}

/// `[reconcile]`.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// Whether full runs read SocialTalent back.
    pub read_back: bool,
    /// Drift policy.
    pub drift: DriftPolicy,
    /// Orphan policy.
    pub orphans: OrphanPolicy,
    /// Users per `GET /Users` page.
    pub page_size: u32,
}

/// `[writeback]`.
#[derive(Debug, Clone)]
pub struct WritebackConfig {
    /// The IdP attribute written.
    pub attribute: String,
    /// The template of the value (sees `scim` and `user`).
    pub value: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[observability]`.
#[derive(Debug, Clone)]
pub struct ObservabilityConfig {
    /// The HTTP endpoint's address, or `None` when turned off.
    pub listen: Option<std::net::SocketAddr>,
    /// The log format.
    pub log_format: LogFormat,
}

impl Config {
    /// Reads and validates a configuration file, and registers every secret it gives that can
    /// be read now with the redaction step (so that text stored before, such as the state's run
    /// records, can be scrubbed of them before anything is sent). A secret that cannot be read
    /// is not an error here: a command fails on it only when it needs it.
    ///
    /// # Errors
    /// [`ConfigError`] for the first problem found: unreadable file, TOML syntax, unknown key,
    /// bad value, or a mapping that does not compile.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            ConfigError::one(
                path,
                "(file)",
                None,
                format!("cannot read the configuration: {error}"),
            )
        })?;
        let config = Config::parse(path, &text)?;
        for secret in config.secrets() {
            // Resolving registers the value; a missing one is reported where it is needed.
            let _ = secret.resolve();
        }
        Ok(config)
    }

    /// Validates configuration text as if read from `path`.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: raw::RawConfig = toml::from_str(text).map_err(|error| {
            let location = error.span().map(|span| line_column(text, span.start));
            let first = ConfigError::one(
                path,
                raw::key_of_toml_error(text, &error),
                location,
                error.message().trim(),
            );
            // serde stops at the first unknown key: name the others too, in one pass.
            let mut problems = vec![];
            if let Ok(table) = text.parse::<toml::Table>() {
                for (key, expected) in raw::unknown_keys(&table) {
                    if key == first.key {
                        continue;
                    }
                    let leaf = key.rsplit('.').next().unwrap_or(&key).trim_matches('"');
                    let message = format!(
                        "unknown field `{leaf}`, expected one of {}",
                        expected
                            .iter()
                            .map(|name| format!("`{name}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                    let location = raw::locate_key(text, &key);
                    problems.push(ConfigError::one(path, key, location, message));
                }
            }
            problems.insert(0, first);
            ConfigError::all(problems)
                .unwrap_or_else(|| ConfigError::one(path, "(file)", None, error.message().trim()))
        })?;
        let config_dir = path
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        let validator = Validator {
            file: path,
            text,
            dir: &config_dir,
        };
        validator.validate(raw)
    }

    /// Every secret this configuration refers to, for `check-config`.
    pub fn secrets(&self) -> Vec<&SecretSetting> {
        let mut secrets = vec![&self.target.token];
        match &self.source {
            SourceConfig::File(_) => {}
            SourceConfig::Okta(okta) => {
                if okta.client_id.is_some() {
                    secrets.push(&okta.private_key);
                } else {
                    secrets.push(&okta.token);
                }
            }
            SourceConfig::Entra(entra) => {
                if entra.certificate_file.is_some() {
                    secrets.push(&entra.private_key);
                } else {
                    secrets.push(&entra.client_secret);
                }
            }
            SourceConfig::OneLogin(onelogin) => secrets.push(&onelogin.client_secret),
        }
        secrets
    }
}

/// Turns a byte offset into a 1-based line and column (in characters).
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, last)| last)
        .chars()
        .count()
        + 1;
    (line, column)
}

struct Validator<'a> {
    file: &'a Path,
    text: &'a str,
    dir: &'a Path,
}

impl Validator<'_> {
    fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::one(self.file, key, raw::locate_key(self.text, key), message)
    }

    /// Validates every section, collecting the problems of all of them (one pass reports
    /// everything that is wrong, not one problem per run).
    fn validate(&self, raw: raw::RawConfig) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let source = keep(&mut problems, self.source(raw.source));
        let target = keep(&mut problems, self.target(raw.target));
        let schedule = keep(&mut problems, self.schedule(raw.schedule));
        let state = self.state(raw.state);
        let safety = keep(&mut problems, self.safety(raw.safety));
        let reconcile = keep(&mut problems, self.reconcile(raw.reconcile));
        let writeback = raw.writeback.map(|writeback| WritebackConfig {
            attribute: writeback.attribute,
            value: writeback
                .value
                .unwrap_or_else(|| "{{ scim.id }}".to_owned()),
        });
        if let Some(writeback) = &writeback {
            if writeback.attribute.trim().is_empty() {
                problems.push(self.error("writeback.attribute", "must not be empty"));
            }
            if matches!(source, Some(SourceConfig::File(_))) {
                problems.push(self.error(
                    "writeback",
                    "write-back needs an okta, entra or onelogin source (the file source cannot be written to)",
                ));
            }
        }
        let observability = keep(&mut problems, self.observability(raw.observability));
        let mut source = source;
        if let (Some(writeback), Some(SourceConfig::Entra(entra))) = (&writeback, &mut source) {
            // The write-back compares with the attribute's current value: select it.
            let head = writeback
                .attribute
                .split('.')
                .next()
                .unwrap_or_default()
                .to_owned();
            if !entra.extra_attributes.contains(&head) {
                entra.extra_attributes.push(head);
            }
        }
        if let (Some(writeback), Some(SourceConfig::OneLogin(_))) = (&writeback, &source) {
            // OneLogin writes custom attributes only; naming the path lets the write-back
            // compare with the value the user object holds.
            let short_name = writeback.attribute.strip_prefix("custom_attributes.");
            if short_name.is_none_or(|name| name.is_empty() || name.contains('.')) {
                problems.push(self.error(
                    "writeback.attribute",
                    format!(
                        "OneLogin writes back into a custom attribute: give it as \"custom_attributes.<short name>\" (for example \"custom_attributes.{}\"), after creating it under Users → Custom User Fields",
                        writeback.attribute.rsplit('.').next().unwrap_or("socialTalentId")
                    ),
                ));
            }
        }
        let mapping = keep(
            &mut problems,
            self.mapping(
                raw.scope,
                raw.mapping,
                writeback.as_ref().map(|w| w.value.clone()),
            ),
        );
        if let Some(error) = ConfigError::all(problems) {
            return Err(error);
        }
        match (
            source,
            target,
            schedule,
            safety,
            reconcile,
            observability,
            mapping,
        ) {
            (
                Some(source),
                Some(target),
                Some(schedule),
                Some(safety),
                Some(reconcile),
                Some(observability),
                Some(mapping),
            ) => Ok(Config {
                file: self.file.to_owned(),
                source,
                target,
                schedule,
                state,
                safety,
                reconcile,
                writeback,
                observability,
                mapping: Arc::new(mapping),
            }),
            // Every `None` above recorded its problem, so this is not reached.
            _ => Err(self.error("(file)", "invalid configuration")),
        }
    }

    fn source(&self, raw: raw::RawSource) -> Result<SourceConfig, ConfigError> {
        match raw.kind.as_str() {
            "file" => {
                let file = raw.file.ok_or_else(|| {
                    self.error(
                        "source.file",
                        "kind = \"file\" needs a [source.file] section with `path`",
                    )
                })?;
                Ok(SourceConfig::File(FileSourceConfig {
                    path: self.dir.join(file.path),
                    list_columns: file
                        .list_columns
                        .unwrap_or_else(|| vec!["groups".to_owned()]),
                }))
            }
            "okta" => {
                let okta = raw.okta.ok_or_else(|| {
                    self.error(
                        "source.okta",
                        "kind = \"okta\" needs a [source.okta] section",
                    )
                })?;
                let org_url = self.url("source.okta.org_url", &okta.org_url)?;
                let token = self.secret("source.okta.token", okta.token, okta.token_file)?;
                let private_key =
                    self.secret("source.okta.private_key", None, okta.private_key_file)?;
                if okta.client_id.is_some() == token.source.is_some() {
                    return Err(self.error(
                        "source.okta",
                        "give either an API token (token or token_file) or an OAuth service app (client_id and private_key_file)",
                    ));
                }
                if okta.client_id.is_some() && private_key.source.is_none() {
                    return Err(self.error(
                        "source.okta.private_key_file",
                        "an OAuth service app (client_id) needs private_key_file",
                    ));
                }
                let groups = okta.groups.unwrap_or_default();
                crate::source::groups::GroupFilter::new(&groups)
                    .map_err(|message| self.error("source.okta.groups", message))?;
                Ok(SourceConfig::Okta(OktaConfig {
                    org_url,
                    token,
                    client_id: okta.client_id,
                    private_key,
                    scopes: okta.scopes.unwrap_or_else(|| {
                        // Every run reads users and groups; every incremental run reads the
                        // System Log for membership changes.
                        vec![
                            "okta.users.read".to_owned(),
                            "okta.groups.read".to_owned(),
                            "okta.logs.read".to_owned(),
                        ]
                    }),
                    suspended_is_active: okta.suspended_is_active.unwrap_or(false),
                    groups,
                }))
            }
            "entra" => {
                let entra = raw.entra.ok_or_else(|| {
                    self.error(
                        "source.entra",
                        "kind = \"entra\" needs a [source.entra] section",
                    )
                })?;
                let client_secret = self.secret(
                    "source.entra.client_secret",
                    entra.client_secret,
                    entra.client_secret_file,
                )?;
                let private_key =
                    self.secret("source.entra.private_key", None, entra.private_key_file)?;
                if entra.certificate_file.is_some() == client_secret.source.is_some() {
                    return Err(self.error(
                        "source.entra",
                        "give either client_secret (or client_secret_file) or certificate_file with private_key_file",
                    ));
                }
                if entra.certificate_file.is_some() && private_key.source.is_none() {
                    return Err(self.error(
                        "source.entra.private_key_file",
                        "certificate_file needs private_key_file",
                    ));
                }
                let groups = entra.groups.unwrap_or_default();
                crate::source::groups::GroupFilter::new(&groups)
                    .map_err(|message| self.error("source.entra.groups", message))?;
                Ok(SourceConfig::Entra(EntraConfig {
                    tenant_id: non_empty(self, "source.entra.tenant_id", entra.tenant_id)?,
                    client_id: non_empty(self, "source.entra.client_id", entra.client_id)?,
                    client_secret,
                    certificate_file: entra
                        .certificate_file
                        .map(|path| secret::locate_secret_file(&path, self.dir)),
                    private_key,
                    extra_attributes: entra.extra_attributes.unwrap_or_default(),
                    groups,
                    nested_groups: entra.nested_groups.unwrap_or(true),
                    graph_url: self.url(
                        "source.entra.graph_url",
                        entra
                            .graph_url
                            .as_deref()
                            .unwrap_or("https://graph.microsoft.com"),
                    )?,
                    login_url: self.url(
                        "source.entra.login_url",
                        entra
                            .login_url
                            .as_deref()
                            .unwrap_or("https://login.microsoftonline.com"),
                    )?,
                }))
            }
            "onelogin" => {
                let onelogin = raw.onelogin.ok_or_else(|| {
                    self.error(
                        "source.onelogin",
                        "kind = \"onelogin\" needs a [source.onelogin] section",
                    )
                })?;
                let client_secret = self.secret(
                    "source.onelogin.client_secret",
                    onelogin.client_secret,
                    onelogin.client_secret_file,
                )?;
                if client_secret.source.is_none() {
                    return Err(self.error(
                        "source.onelogin",
                        "give client_secret (or client_secret_file): the API credential's secret",
                    ));
                }
                let groups = onelogin.groups.unwrap_or_default();
                crate::source::groups::GroupFilter::new(&groups)
                    .map_err(|message| self.error("source.onelogin.groups", message))?;
                let employee_id_attribute = match onelogin.employee_id_attribute {
                    Some(name) if name.trim().is_empty() => {
                        return Err(self.error(
                            "source.onelogin.employee_id_attribute",
                            "must name a custom attribute (its short name), or be left out",
                        ));
                    }
                    other => other,
                };
                Ok(SourceConfig::OneLogin(OneLoginConfig {
                    api_url: self.url("source.onelogin.api_url", &onelogin.api_url)?,
                    client_id: non_empty(self, "source.onelogin.client_id", onelogin.client_id)?,
                    client_secret,
                    groups,
                    suspended_is_active: onelogin.suspended_is_active.unwrap_or(false),
                    unactivated_is_active: onelogin.unactivated_is_active.unwrap_or(false),
                    employee_id_attribute,
                }))
            }
            other => Err(self.error(
                "source.kind",
                format!(
                    "unknown source kind {other:?}; expected \"okta\", \"entra\", \"onelogin\" or \"file\""
                ),
            )),
        }
    }

    fn target(&self, raw: raw::RawTarget) -> Result<TargetConfig, ConfigError> {
        // Every problem of the table is reported; a bad value stands in as its default.
        let mut problems = Vec::new();
        let base_url =
            keep(&mut problems, self.url("target.base_url", &raw.base_url)).map(|mut base_url| {
                let trimmed = base_url.path().trim_end_matches('/').to_owned();
                base_url.set_path(&trimmed);
                base_url
            });
        let token = keep(
            &mut problems,
            self.secret("target.token", raw.token, raw.token_file),
        );
        let update_with = match raw.update_with.as_deref().unwrap_or("put") {
            "put" => UpdateWith::Put,
            "patch" => UpdateWith::Patch,
            other => {
                problems.push(self.error(
                    "target.update_with",
                    format!("expected \"put\" or \"patch\", found {other:?}"),
                ));
                UpdateWith::Put
            }
        };
        let deactivate_with = match raw.deactivate_with.as_deref().unwrap_or("delete") {
            "delete" => DeactivateWith::Delete,
            "patch" => DeactivateWith::Patch,
            other => {
                problems.push(self.error(
                    "target.deactivate_with",
                    format!("expected \"delete\" or \"patch\", found {other:?}"),
                ));
                DeactivateWith::Delete
            }
        };
        let requests_per_second = raw.requests_per_second.unwrap_or(5.0);
        if !(requests_per_second.is_finite() && requests_per_second > 0.0) {
            problems.push(self.error(
                "target.requests_per_second",
                "must be a number greater than 0",
            ));
        }
        let burst = raw.burst.unwrap_or(5);
        if burst == 0 {
            problems.push(self.error("target.burst", "must be at least 1"));
        }
        let max_in_flight = raw.max_in_flight.unwrap_or(4);
        if max_in_flight == 0 {
            problems.push(self.error("target.max_in_flight", "must be at least 1"));
        }
        let timeout = match raw.timeout.as_deref() {
            None => Duration::from_secs(30),
            Some(text) => match humantime::parse_duration(text) {
                Ok(timeout) => timeout,
                Err(error) => {
                    problems.push(self.error(
                        "target.timeout",
                        format!("{error} (write a duration such as \"30s\" or \"2m\")"),
                    ));
                    Duration::from_secs(30)
                }
            },
        };
        if timeout.is_zero() {
            problems.push(self.error("target.timeout", "must be longer than 0"));
        }
        if let Some(error) = ConfigError::all(problems) {
            return Err(error);
        }
        let (Some(base_url), Some(token)) = (base_url, token) else {
            return Err(self.error("target", "invalid"));
        };
        Ok(TargetConfig {
            base_url,
            token,
            extension_schema: raw
                .extension_schema
                .unwrap_or_else(|| DEFAULT_EXTENSION_SCHEMA.to_owned()),
            update_with,
            deactivate_with,
            requests_per_second,
            burst,
            max_in_flight,
            timeout,
            max_retries: raw.max_retries.unwrap_or(5),
        })
    }

    fn schedule(&self, raw: raw::RawSchedule) -> Result<ScheduleConfig, ConfigError> {
        let mut problems = Vec::new();
        let cron = keep(
            &mut problems,
            self.cron(
                "schedule.cron",
                raw.cron.as_deref().unwrap_or("*/10 * * * *"),
            ),
        );
        let full_cron = keep(
            &mut problems,
            self.cron(
                "schedule.full_cron",
                raw.full_cron.as_deref().unwrap_or("0 3 * * *"),
            ),
        );
        let timezone_name = raw.timezone.as_deref().unwrap_or("UTC");
        let timezone = timezone_name
            .parse::<chrono_tz::Tz>()
            .map_err(|_| {
                problems.push(self.error(
                    "schedule.timezone",
                    format!("unknown time zone {timezone_name:?} (use an IANA name such as \"Europe/Dublin\")"),
                ));
            })
            .ok();
        if let Some(error) = ConfigError::all(problems) {
            return Err(error);
        }
        match (cron, full_cron, timezone) {
            (Some(cron), Some(full_cron), Some(timezone)) => Ok(ScheduleConfig {
                cron,
                full_cron,
                timezone,
            }),
            _ => Err(self.error("schedule", "invalid")),
        }
    }

    fn cron(&self, key: &str, expression: &str) -> Result<crate::schedule::Cron, ConfigError> {
        parse_cron(expression).map_err(|message| self.error(key, message))
    }

    fn state(&self, raw: raw::RawState) -> StateConfig {
        let from_systemd = std::env::var_os("STATE_DIRECTORY").is_some_and(|dirs| {
            !dirs
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or_default()
                .is_empty()
        });
        let named = raw.path.is_some() || from_systemd;
        let path = match raw.path {
            Some(path) => self.dir.join(path),
            None => std::env::var_os("STATE_DIRECTORY")
                .map(|dirs| {
                    // systemd may pass several colon-separated directories; the first is ours.
                    let first = dirs
                        .to_string_lossy()
                        .split(':')
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    PathBuf::from(first)
                })
                .filter(|path| !path.as_os_str().is_empty())
                .unwrap_or_else(|| PathBuf::from("socialtalent-sync-state")),
        };
        StateConfig { path, named }
    }

    fn safety(&self, raw: raw::RawSafety) -> Result<SafetyConfig, ConfigError> {
        let mut problems = Vec::new();
        let percent = raw.max_deactivation_percent.unwrap_or(5.0);
        if !(0.0..=100.0).contains(&percent) {
            problems.push(self.error(
                "safety.max_deactivation_percent",
                "must be between 0 and 100",
            ));
        }
        let quarantine = raw.failure_quarantine_after.unwrap_or(5);
        if quarantine == 0 {
            problems.push(self.error("safety.failure_quarantine_after", "must be at least 1"));
        }
        let protect = Protect::new(&raw.protect.unwrap_or_default())
            .map_err(|message| problems.push(self.error("safety.protect", message)))
            .ok();
        if let Some(error) = ConfigError::all(problems) {
            return Err(error);
        }
        let Some(protect) = protect else {
            return Err(self.error("safety.protect", "invalid"));
        };
        Ok(SafetyConfig {
            max_deactivations: raw.max_deactivations.unwrap_or(25),
            max_deactivation_percent: percent,
            failure_quarantine_after: quarantine,
            protect,
        })
    }

    fn reconcile(&self, raw: raw::RawReconcile) -> Result<ReconcileConfig, ConfigError> {
        let mut problems = Vec::new();
        let drift = match raw.drift.as_deref().unwrap_or("repair") {
            "repair" => DriftPolicy::Repair,
            "report" => DriftPolicy::Report,
            other => {
                problems.push(self.error(
                    "reconcile.drift",
                    format!("expected \"repair\" or \"report\", found {other:?}"),
                ));
                DriftPolicy::Repair
            }
        };
        let orphans = match raw.orphans.as_deref().unwrap_or("report") {
            "report" => OrphanPolicy::Report,
            "deactivate" => OrphanPolicy::Deactivate,
            other => {
                problems.push(self.error(
                    "reconcile.orphans",
                    format!("expected \"report\" or \"deactivate\", found {other:?}"),
                ));
                OrphanPolicy::Report
            }
        };
        let page_size = raw.page_size.unwrap_or(100);
        if page_size == 0 {
            problems.push(self.error("reconcile.page_size", "must be at least 1"));
        }
        if let Some(error) = ConfigError::all(problems) {
            return Err(error);
        }
        Ok(ReconcileConfig {
            read_back: raw.read_back.unwrap_or(true),
            drift,
            orphans,
            page_size,
        })
    }

    fn observability(
        &self,
        raw: raw::RawObservability,
    ) -> Result<ObservabilityConfig, ConfigError> {
        let mut problems = Vec::new();
        let listen = match raw.listen.as_deref().unwrap_or("127.0.0.1:9184") {
            "" => None,
            text => text
                .parse()
                .map_err(|_| {
                    problems.push(self.error(
                        "observability.listen",
                        format!(
                            "{text:?} is not an address such as \"127.0.0.1:9184\" (\"\" turns it off)"
                        ),
                    ));
                })
                .ok(),
        };
        let log_format = match raw.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                problems.push(self.error(
                    "observability.log_format",
                    format!("expected \"text\" or \"json\", found {other:?}"),
                ));
                LogFormat::Text
            }
        };
        match ConfigError::all(problems) {
            Some(error) => Err(error),
            None => Ok(ObservabilityConfig { listen, log_format }),
        }
    }

    fn mapping(
        &self,
        scope: raw::RawScope,
        mapping: raw::RawMapping,
        writeback: Option<String>,
    ) -> Result<crate::mapping::Mapper, ConfigError> {
        // Every rule of the wrong shape is reported; the mapping compiles once all have one.
        let mut problems = Vec::new();
        let mut rules = Vec::new();
        for (name, value) in mapping {
            if name == "udf" {
                let toml::Value::Table(table) = value.get_ref() else {
                    problems.push(self.spanned_error(
                        "mapping.udf",
                        value.span().start,
                        "must be a table of user-defined fields ([mapping.udf])",
                    ));
                    continue;
                };
                for (field, rule) in table {
                    let key = format!("mapping.udf.{field}");
                    if let Some(spec) =
                        keep(&mut problems, self.rule(&key, rule, value.span().start))
                    {
                        rules.push((format!("udf_{field}"), key, spec));
                    }
                }
            } else {
                let key = format!("mapping.{}", raw::quote_key(&name));
                if let Some(spec) = keep(
                    &mut problems,
                    self.rule(&key, value.get_ref(), value.span().start),
                ) {
                    rules.push((name, key, spec));
                }
            }
        }
        if !rules
            .iter()
            .any(|(name, _, _)| name == crate::model::attr::USER_NAME)
            && !problems
                .iter()
                .any(|problem| problem.key == "mapping.userName")
        {
            problems.push(self.error(
                "mapping.userName",
                "is required: every SocialTalent user needs a userName (for example \"{{ user.email | lower }}\")",
            ));
        }
        // The rules of the right shape are compiled even when others are not, so that the first
        // template that does not compile is reported in the same pass.
        let spec = MappingSpec {
            scope: scope.when,
            rules,
            writeback,
        };
        let mapper = crate::mapping::Mapper::compile(&spec).map_err(|error| {
            let location = raw::locate_key(self.text, &error.key);
            ConfigError::one(self.file, error.key, location, error.message)
        });
        match (ConfigError::all(problems), mapper) {
            (None, mapper) => mapper,
            (Some(error), Ok(_)) => Err(error),
            (Some(error), Err(compile)) => Err(ConfigError::all(vec![error, compile])
                .unwrap_or_else(|| self.error("mapping", "invalid"))),
        }
    }

    fn rule(&self, key: &str, value: &toml::Value, offset: usize) -> Result<RuleSpec, ConfigError> {
        RuleSpec::from_toml(value).map_err(|message| self.spanned_error(key, offset, message))
    }

    fn spanned_error(&self, key: &str, offset: usize, message: impl Into<String>) -> ConfigError {
        ConfigError::one(
            self.file,
            key,
            Some(line_column(self.text, offset)),
            message,
        )
    }

    fn url(&self, key: &str, text: &str) -> Result<url::Url, ConfigError> {
        parse_service_url(text).map_err(|message| self.error(key, message))
    }

    fn secret(
        &self,
        key: &str,
        inline: Option<String>,
        file: Option<String>,
    ) -> Result<SecretSetting, ConfigError> {
        SecretSetting::from_keys(key, inline.as_deref(), file.as_deref(), self.dir)
            .map_err(|message| self.error(key, message))
    }
}

/// The value of a section that validated, or `None` with its problems added to `problems`.
fn keep<T>(problems: &mut Vec<ConfigError>, result: Result<T, ConfigError>) -> Option<T> {
    result.map_err(|error| problems.push(error)).ok()
}

fn non_empty(validator: &Validator<'_>, key: &str, value: String) -> Result<String, ConfigError> {
    if value.trim().is_empty() {
        Err(validator.error(key, "must not be empty"))
    } else {
        Ok(value)
    }
}

/// Parses a URL that the program will call: `https`, or `http` to a loopback address.
///
/// # Errors
/// A message saying what is wrong.
pub fn parse_service_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|error| format!("{text:?} is not a URL: {error}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "{text:?} uses http; only https is allowed (http only to a loopback address)"
        )),
        other => Err(format!("{text:?} uses {other:?}; only https is allowed")),
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain == "localhost",
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// Parses a cron expression: standard 5 fields (minute precision) or 6/7 fields with seconds.
/// When both the day-of-month and the day-of-week fields are restricted, either matching is
/// enough (standard cron; see [`crate::schedule`]).
///
/// # Errors
/// A message naming the expression and the parser's complaint.
pub fn parse_cron(expression: &str) -> Result<crate::schedule::Cron, String> {
    let parts: Vec<&str> = expression.split_whitespace().collect();
    let fields = parts.len();
    // Whether a day field is restricted is read as written (`*/2` is not, as in Vixie cron),
    // before the weekdays are rewritten as names.
    let restricted = |field: &str| !(field.starts_with('*') || field.starts_with('?'));
    let (normalised, month_day, weekday) = match fields {
        // Standard cron counts weekdays 0-7 from Sunday; the cron crate counts 1-7 from Sunday.
        5 => (
            format!(
                "0 {} {} {} {} {}",
                parts[0],
                parts[1],
                parts[2],
                parts[3],
                standard_weekdays(parts[4]).map_err(|message| {
                    format!("{expression:?}: the weekday field {message}")
                })?
            ),
            parts[2],
            parts[4],
        ),
        6 | 7 => (expression.to_owned(), parts[3], parts[5]),
        _ => {
            return Err(format!(
                "{expression:?} has {fields} fields; expected 5 (minute hour day month weekday) or 6 with seconds first"
            ));
        }
    };
    let days = if restricted(month_day) && restricted(weekday) {
        crate::schedule::DayMatch::Either
    } else {
        crate::schedule::DayMatch::Both
    };
    crate::schedule::Cron::parse(&normalised, days)
        .map_err(|error| format!("{expression:?} is not a valid cron expression: {error}"))
}

/// Rewrites a standard cron weekday field (`0`-`7`, Sunday = 0 or 7, names, ranges, steps) as
/// a list of day names, which means the same to the cron crate.
fn standard_weekdays(field: &str) -> Result<String, String> {
    const NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    if field == "*" || field == "?" {
        return Ok("*".into());
    }
    let day = |text: &str| -> Result<usize, String> {
        if let Ok(number) = text.parse::<usize>() {
            return match number {
                0..=6 => Ok(number),
                7 => Ok(0),
                _ => Err(format!("has {number}; weekdays are 0-7 (Sunday is 0 or 7)")),
            };
        }
        NAMES
            .iter()
            .position(|name| name.eq_ignore_ascii_case(text))
            .ok_or_else(|| format!("has {text:?}, which is not a weekday"))
    };
    let mut days = [false; 7];
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (
                range,
                step.parse::<usize>()
                    .ok()
                    .filter(|step| *step > 0)
                    .ok_or_else(|| format!("has the step {step:?}"))?,
            ),
            None => (item, 1),
        };
        let (first, last) = match range {
            "*" => (0, 6),
            _ => match range.split_once('-') {
                Some((a, b)) => {
                    let first = day(a)?;
                    // "5-7" runs Friday to Sunday: 7 is the end of the week here.
                    let last = if b == "7" { 7 } else { day(b)? };
                    (first, last)
                }
                None if item.contains('/') => (day(range)?, 6),
                None => (day(range)?, day(range)?),
            },
        };
        if last < first {
            return Err(format!("has the backwards range {range:?}"));
        }
        for value in (first..=last).step_by(step) {
            days[value % 7] = true;
        }
    }
    Ok(NAMES
        .iter()
        .zip(days)
        .filter(|(_, on)| *on)
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(","))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz_tests;

#[cfg(test)]
mod docs_tests;
