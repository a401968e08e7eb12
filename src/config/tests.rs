//! Unit tests of the configuration loader: every error names the file, the key path and, where
//! known, the line and column; the bundled examples load; secrets stay hidden.

use std::path::Path;
use std::sync::Mutex;

use super::*;

/// Serialises the tests that set `$CREDENTIALS_DIRECTORY` (one name for the whole process).
static CREDENTIALS_ENV: Mutex<()> = Mutex::new(());

/// A minimal valid configuration; tests add sections to it or replace lines of it.
const BASE: &str = r#"[source]
kind = "file"

[source.file]
path = "directory.json"

[target]
base_url = "https://socialtalent.example/scim/v2"
token = "${ST_SYNC_CONFIG_TEST_TOKEN_UNSET}"

[mapping]
userName = "{{ user.email | lower }}"
coreTeam = "{{ user.department }}"
role = "user"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("cfg.toml"), text)
}

fn valid(text: &str) -> Config {
    parse(text).expect("the configuration is valid")
}

fn invalid(text: &str) -> ConfigError {
    let error = parse(text).expect_err("the configuration is invalid");
    // Every error names the file, and its Display form starts with it.
    assert_eq!(error.file, Path::new("cfg.toml"));
    assert!(
        error.to_string().starts_with("cfg.toml: "),
        "message does not name the file: {error}"
    );
    assert!(
        error.to_string().contains(&error.key),
        "message does not name the key: {error}"
    );
    error
}

/// `BASE` with `line` replaced by `with` (which must be found).
fn base_with(line: &str, with: &str) -> String {
    assert!(BASE.contains(line), "BASE has no line {line:?}");
    BASE.replacen(line, with, 1)
}

/// `BASE` with the extra text inserted after the `[target]` table.
fn target_with(extra: &str) -> String {
    base_with(
        "token = \"${ST_SYNC_CONFIG_TEST_TOKEN_UNSET}\"\n",
        &format!("token = \"${{ST_SYNC_CONFIG_TEST_TOKEN_UNSET}}\"\n{extra}\n"),
    )
}

fn line_of(error: &ConfigError) -> usize {
    error
        .location
        .map(|(line, _)| line)
        .unwrap_or_else(|| unreachable!("no location in {error}"))
}

// ─── The base and the defaults ────────────────────────────────────────────────────────────────

#[test]
fn base_is_valid_and_takes_the_defaults() {
    let config = valid(BASE);
    let SourceConfig::File(file) = &config.source else {
        unreachable!("the source is a file");
    };
    // A relative source path is resolved against the configuration file's directory.
    assert_eq!(file.path, Path::new("./directory.json"));
    assert_eq!(
        config.target.base_url.as_str(),
        "https://socialtalent.example/scim/v2"
    );
    assert_eq!(config.target.extension_schema, DEFAULT_EXTENSION_SCHEMA);
    assert_eq!(config.target.update_with, UpdateWith::Put);
    assert_eq!(config.target.deactivate_with, DeactivateWith::Delete);
    assert_eq!(config.target.timeout, Duration::from_secs(30));
    assert_eq!(config.target.burst, 5);
    assert_eq!(config.target.max_in_flight, 4);
    assert_eq!(config.target.max_retries, 5);
    assert!(config.reconcile.read_back);
    assert_eq!(config.reconcile.drift, DriftPolicy::Repair);
    assert_eq!(config.reconcile.orphans, OrphanPolicy::Report);
    assert_eq!(config.observability.log_format, LogFormat::Text);
    assert_eq!(
        config.observability.listen,
        Some("127.0.0.1:9184".parse().expect("an address"))
    );
    assert_eq!(config.schedule.timezone, chrono_tz::UTC);
    assert!(config.writeback.is_none());
}

#[test]
fn base_url_loses_its_trailing_slash() {
    let config = valid(&base_with(
        "https://socialtalent.example/scim/v2",
        "https://socialtalent.example/scim/v2/",
    ));
    assert_eq!(
        config.target.base_url.as_str(),
        "https://socialtalent.example/scim/v2"
    );
}

// ─── TOML syntax, unknown keys, types ────────────────────────────────────────────────────────

#[test]
fn toml_syntax_error_has_line_and_column() {
    let error = invalid(&base_with("kind = \"file\"", "kind = \"file"));
    assert_eq!(line_of(&error), 2, "{error}");
    assert!(error.location.is_some_and(|(_, column)| column >= 1));
    assert!(error.to_string().contains("(line 2, column "), "{error}");
}

#[test]
fn unknown_top_level_key() {
    let error = invalid(&format!("colour = \"blue\"\n{BASE}"));
    assert_eq!(error.key, "colour", "{error}");
    assert_eq!(line_of(&error), 1, "{error}");
    assert!(error.message.contains("unknown field"), "{error}");
}

#[test]
fn unknown_top_level_table() {
    let error = invalid(&format!("{BASE}\n[sheduel]\ncron = \"* * * * *\"\n"));
    assert_eq!(error.key, "sheduel", "{error}");
    assert_eq!(error.location, Some((16, 2)), "{error}");
    assert!(error.message.contains("unknown field `sheduel`"), "{error}");
}

#[test]
fn unknown_sub_table() {
    let error = invalid(&format!("{BASE}\n[source.fiel]\npath = \"x\"\n"));
    assert_eq!(error.key, "source.fiel", "{error}");
    assert_eq!(line_of(&error), 16, "{error}");
}

#[test]
fn unknown_key_in_target() {
    let error = invalid(&target_with("tokne = \"x\""));
    assert_eq!(error.key, "target.tokne", "{error}");
    assert_eq!(error.location, Some((10, 1)), "{error}");
    assert!(error.message.contains("unknown field `tokne`"), "{error}");
}

#[test]
fn unknown_key_in_source_file() {
    let error = invalid(&base_with(
        "path = \"directory.json\"",
        "path = \"directory.json\"\nformat = \"csv\"",
    ));
    assert_eq!(error.key, "source.file.format", "{error}");
    assert_eq!(error.location, Some((6, 1)), "{error}");
}

#[test]
fn unknown_key_in_a_rule_table() {
    let text = base_with(
        "role = \"user\"",
        "role = { rules = [\n  { when = \"user.active\", value = \"advisor\" },\n], defualt = \"user\" }",
    );
    let error = invalid(&text);
    assert_eq!(error.key, "mapping.role", "{error}");
    assert!(error.message.contains("defualt"), "{error}");
    assert_eq!(line_of(&error), 14, "{error}");
}

#[test]
fn unknown_key_in_one_rule() {
    let text = base_with(
        "role = \"user\"",
        "role = { rules = [{ when = \"user.active\", vaule = \"advisor\" }], default = \"user\" }",
    );
    let error = invalid(&text);
    assert_eq!(error.key, "mapping.role", "{error}");
    assert!(
        error.message.contains("rules[0]: unknown key `vaule`"),
        "{error}"
    );
}

#[test]
fn wrong_type_names_the_key() {
    let error = invalid(&target_with("burst = \"five\""));
    assert_eq!(error.key, "target.burst", "{error}");
    assert_eq!(line_of(&error), 10, "{error}");
    assert!(error.message.contains("invalid type"), "{error}");
}

#[test]
fn wrong_type_of_a_mapping_value() {
    let error = invalid(&base_with("role = \"user\"", "role = 3"));
    assert_eq!(error.key, "mapping.role", "{error}");
    assert_eq!(line_of(&error), 14, "{error}");
    assert!(error.message.contains("found a integer") || error.message.contains("integer"));
}

#[test]
fn missing_required_section() {
    let text = BASE.replace("[mapping]\n", "[other]\n");
    let error = invalid(&text);
    assert!(error.to_string().contains("other"), "{error}");
    let text = BASE
        .split("[mapping]")
        .next()
        .expect("BASE has [mapping]")
        .to_owned();
    let error = invalid(&text);
    assert!(error.message.contains("mapping"), "{error}");
}

// ─── Enumerations ────────────────────────────────────────────────────────────────────────────

#[test]
fn bad_enum_values_are_named() {
    let cases = [
        (
            target_with("update_with = \"post\""),
            "target.update_with",
            "\"post\"",
        ),
        (
            target_with("deactivate_with = \"suspend\""),
            "target.deactivate_with",
            "\"suspend\"",
        ),
        (
            format!("{BASE}\n[reconcile]\ndrift = \"ignore\"\n"),
            "reconcile.drift",
            "\"ignore\"",
        ),
        (
            format!("{BASE}\n[reconcile]\norphans = \"delete\"\n"),
            "reconcile.orphans",
            "\"delete\"",
        ),
        (
            format!("{BASE}\n[observability]\nlog_format = \"xml\"\n"),
            "observability.log_format",
            "\"xml\"",
        ),
        (
            base_with("kind = \"file\"", "kind = \"ldap\""),
            "source.kind",
            "\"ldap\"",
        ),
    ];
    for (text, key, value) in cases {
        let error = invalid(&text);
        assert_eq!(error.key, key, "{error}");
        assert!(error.message.contains(value), "{error}");
        assert!(error.message.contains("expected"), "{error}");
        assert!(error.location.is_some(), "{error}");
    }
}

#[test]
fn enum_values_are_read() {
    let config = valid(&format!(
        "{}\n[reconcile]\nread_back = false\ndrift = \"report\"\norphans = \"deactivate\"\n\
         [observability]\nlog_format = \"json\"\nlisten = \"\"\n",
        target_with("update_with = \"patch\"\ndeactivate_with = \"patch\"")
    ));
    assert_eq!(config.target.update_with, UpdateWith::Patch);
    assert_eq!(config.target.deactivate_with, DeactivateWith::Patch);
    assert!(!config.reconcile.read_back);
    assert_eq!(config.reconcile.drift, DriftPolicy::Report);
    assert_eq!(config.reconcile.orphans, OrphanPolicy::Deactivate);
    assert_eq!(config.observability.log_format, LogFormat::Json);
    assert_eq!(config.observability.listen, None);
}

#[test]
fn enum_error_points_at_its_line() {
    let error = invalid(&format!(
        "{BASE}\n[reconcile]\nread_back = false\ndrift = \"ignore\"\n"
    ));
    assert_eq!(error.location, Some((18, 1)), "{error}");
    assert!(error.to_string().contains("(line 18, column 1)"), "{error}");
}

// ─── URLs, numbers, durations ───────────────────────────────────────────────────────────────

#[test]
fn http_is_only_allowed_to_loopback() {
    for url in [
        "http://socialtalent.example/scim/v2",
        "http://10.0.0.1/scim/v2",
        "ftp://socialtalent.example/scim",
        "not a url",
    ] {
        let error = invalid(&base_with("https://socialtalent.example/scim/v2", url));
        assert_eq!(error.key, "target.base_url", "{error}");
        assert_eq!(line_of(&error), 8, "{error}");
        assert!(error.message.contains(url), "{error}");
    }
    for url in [
        "http://127.0.0.1:18080/v2",
        "http://localhost:8080/scim",
        "http://[::1]:8080/scim",
        "https://socialtalent.example/scim/v2",
        "https://10.0.0.1/scim/v2",
    ] {
        valid(&base_with("https://socialtalent.example/scim/v2", url));
    }
}

#[test]
fn okta_org_url_must_be_https() {
    let text = base_with(
        "kind = \"file\"",
        "kind = \"okta\"\n\n[source.okta]\norg_url = \"http://example.okta.com\"\ntoken = \"${OKTA_TOKEN}\"",
    );
    let error = invalid(&text);
    assert_eq!(error.key, "source.okta.org_url", "{error}");
    assert_eq!(line_of(&error), 5, "{error}");
}

#[test]
fn bad_timeout() {
    let error = invalid(&target_with("timeout = \"soon\""));
    assert_eq!(error.key, "target.timeout", "{error}");
    assert_eq!(line_of(&error), 10, "{error}");
    assert!(error.message.contains("30s"), "{error}");
    let error = invalid(&target_with("timeout = \"0s\""));
    assert_eq!(error.key, "target.timeout", "{error}");
    let error = invalid(&target_with("timeout = 30"));
    assert_eq!(error.key, "target.timeout", "{error}");
    let config = valid(&target_with("timeout = \"1m 30s\""));
    assert_eq!(config.target.timeout, Duration::from_secs(90));
}

#[test]
fn numbers_out_of_range() {
    for (extra, key) in [
        ("burst = 0", "target.burst"),
        ("max_in_flight = 0", "target.max_in_flight"),
        ("requests_per_second = 0.0", "target.requests_per_second"),
        ("requests_per_second = -1.0", "target.requests_per_second"),
        ("burst = -1", "target.burst"),
    ] {
        let error = invalid(&target_with(extra));
        assert_eq!(error.key, key, "{extra}: {error}");
    }
    let error = invalid(&format!(
        "{BASE}\n[safety]\nmax_deactivation_percent = 120.0\n"
    ));
    assert_eq!(error.key, "safety.max_deactivation_percent", "{error}");
    let error = invalid(&format!("{BASE}\n[reconcile]\npage_size = 0\n"));
    assert_eq!(error.key, "reconcile.page_size", "{error}");
}

// ─── Schedule ───────────────────────────────────────────────────────────────────────────────

#[test]
fn five_and_six_field_cron_are_accepted() {
    let config = valid(&format!(
        "{BASE}\n[schedule]\ncron = \"*/5 * * * *\"\nfull_cron = \"30 0 3 * * *\"\ntimezone = \"Europe/Dublin\"\n"
    ));
    assert_eq!(config.schedule.timezone, chrono_tz::Europe::Dublin);
    // The 5-field form runs on the minute (second 0).
    let next = config
        .schedule
        .cron
        .upcoming(chrono::Utc)
        .next()
        .expect("a next tick");
    assert_eq!(chrono::Timelike::second(&next), 0);
    assert_eq!(chrono::Timelike::minute(&next) % 5, 0);
    let next_full = config
        .schedule
        .full_cron
        .upcoming(chrono::Utc)
        .next()
        .expect("a next tick");
    assert_eq!(chrono::Timelike::second(&next_full), 30);
    assert_eq!(chrono::Timelike::hour(&next_full), 3);
}

#[test]
fn four_field_cron_is_rejected() {
    let error = invalid(&format!("{BASE}\n[schedule]\ncron = \"* * * *\"\n"));
    assert_eq!(error.key, "schedule.cron", "{error}");
    assert_eq!(error.location, Some((17, 1)), "{error}");
    assert!(error.message.contains("4 fields"), "{error}");
    assert!(error.message.contains("expected 5"), "{error}");
}

#[test]
fn unparsable_cron_is_rejected() {
    let error = invalid(&format!("{BASE}\n[schedule]\nfull_cron = \"0 25 * * *\"\n"));
    assert_eq!(error.key, "schedule.full_cron", "{error}");
    assert!(
        error.message.contains("not a valid cron expression"),
        "{error}"
    );
}

#[test]
fn unknown_timezone() {
    let error = invalid(&format!(
        "{BASE}\n[schedule]\ntimezone = \"Mars/Olympus\"\n"
    ));
    assert_eq!(error.key, "schedule.timezone", "{error}");
    assert_eq!(line_of(&error), 17, "{error}");
    assert!(error.message.contains("Mars/Olympus"), "{error}");
}

// ─── Mapping and scope ──────────────────────────────────────────────────────────────────────

#[test]
fn bad_template_names_the_attribute() {
    let text = format!("{BASE}title = \"{{{{ user.title \"\n");
    let error = invalid(&text);
    assert_eq!(error.key, "mapping.title", "{error}");
    assert_eq!(error.location, Some((15, 1)), "{error}");
    assert!(
        error.message.contains("template does not compile"),
        "{error}"
    );
}

#[test]
fn bad_template_in_a_quoted_key() {
    let text = format!("{BASE}\"name.givenName\" = \"{{% if %}}\"\n");
    let error = invalid(&text);
    assert_eq!(error.key, "mapping.\"name.givenName\"", "{error}");
    assert_eq!(line_of(&error), 15, "{error}");
}

#[test]
fn bad_scope_expression() {
    let text = format!("{BASE}\n[scope]\nwhen = \"user.active and\"\n");
    let error = invalid(&text);
    assert_eq!(error.key, "scope.when", "{error}");
    assert_eq!(error.location, Some((17, 1)), "{error}");
    assert!(
        error.message.contains("expression does not compile"),
        "{error}"
    );
}

#[test]
fn bad_rule_expression_names_its_index() {
    let text = base_with(
        "role = \"user\"",
        "role = { rules = [\n  { when = \"user.active\", value = \"advisor\" },\n  { when = \"user.groups contains\", value = \"company_admin\" },\n], default = \"user\" }",
    );
    let error = invalid(&text);
    assert_eq!(error.key, "mapping.role.rules[1].when", "{error}");
    assert!(
        error.message.contains("expression does not compile"),
        "{error}"
    );
    // The line is the attribute's (the rule sits inside an inline table).
    assert_eq!(line_of(&error), 14, "{error}");
}

#[test]
fn bad_expr_rule() {
    let error = invalid(&base_with(
        "role = \"user\"",
        "role = { expr = \"user.(\" }",
    ));
    assert_eq!(error.key, "mapping.role.expr", "{error}");
    assert_eq!(line_of(&error), 14, "{error}");
}

#[test]
fn lookup_rule_needs_a_map() {
    let error = invalid(&base_with(
        "role = \"user\"",
        "role = { from = \"user.title\" }",
    ));
    assert_eq!(error.key, "mapping.role", "{error}");
    assert!(error.message.contains("map"), "{error}");
}

#[test]
fn udf_keys_become_udf_attributes() {
    let text = format!(
        "{BASE}\n[mapping.udf]\nCustomer_ID = \"{{{{ user.attrs.customerId }}}}\"\ncostCenter = {{ expr = \"user.attrs.costCenter\" }}\n"
    );
    let config = valid(&text);
    let attributes = config.mapping.attributes();
    for name in [
        "userName",
        "coreTeam",
        "role",
        "udf_Customer_ID",
        "udf_costCenter",
        "externalId",
    ] {
        assert!(
            attributes.iter().any(|attribute| attribute == name),
            "{name} missing from {attributes:?}"
        );
    }
    assert!(!attributes.iter().any(|attribute| attribute == "udf"));
    assert!(
        !attributes
            .iter()
            .any(|attribute| attribute == "Customer_ID")
    );
}

#[test]
fn bad_udf_template_names_the_field() {
    let text = format!("{BASE}\n[mapping.udf]\nCustomer_ID = \"{{{{ user.attrs.\"\n");
    let error = invalid(&text);
    assert_eq!(error.key, "mapping.udf.Customer_ID", "{error}");
    assert_eq!(error.location, Some((17, 1)), "{error}");
}

#[test]
fn udf_must_be_a_table() {
    let error = invalid(&format!("{BASE}udf = \"x\"\n"));
    assert_eq!(error.key, "mapping.udf", "{error}");
    assert_eq!(line_of(&error), 15, "{error}");
}

#[test]
fn attribute_mapped_twice_through_udf() {
    let text = format!(
        "{BASE}udf_x = \"{{{{ user.id }}}}\"\n\n[mapping.udf]\nx = \"{{{{ user.id }}}}\"\n"
    );
    let error = invalid(&text);
    assert!(
        error.key == "mapping.udf_x" || error.key == "mapping.udf.x",
        "{error}"
    );
    assert_eq!(error.message, "udf_x is mapped twice", "{error}");
    assert!(error.location.is_some(), "{error}");
}

// ─── Secrets ────────────────────────────────────────────────────────────────────────────────

#[test]
fn unset_env_secret_fails_only_on_resolve() {
    let config = valid(BASE);
    let error = config
        .target
        .token
        .resolve()
        .expect_err("the variable is unset");
    assert_eq!(
        error.to_string(),
        "target.token: environment variable ST_SYNC_CONFIG_TEST_TOKEN_UNSET is not set"
    );
    assert_eq!(config.secrets().len(), 1);
    assert_eq!(config.secrets()[0].key, "target.token");
}

#[test]
fn absent_token_fails_only_on_resolve() {
    let config = valid(&base_with(
        "token = \"${ST_SYNC_CONFIG_TEST_TOKEN_UNSET}\"\n",
        "",
    ));
    let error = config.target.token.resolve().expect_err("no token given");
    assert!(
        error.to_string().starts_with("target.token is not set"),
        "{error}"
    );
}

#[test]
fn token_file_is_relative_to_the_config_dir() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("st-config-test-token-a"),
        "token-from-config-dir\n",
    )
    .expect("write the token");
    let text = base_with(
        "token = \"${ST_SYNC_CONFIG_TEST_TOKEN_UNSET}\"",
        "token_file = \"st-config-test-token-a\"",
    );
    let config = Config::parse(&dir.path().join("config.toml"), &text).expect("valid");
    assert_eq!(
        config.target.token.resolve().expect("readable").expose(),
        "token-from-config-dir"
    );
}

#[test]
fn unreadable_token_file_names_the_key_and_path() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = base_with(
        "token = \"${ST_SYNC_CONFIG_TEST_TOKEN_UNSET}\"",
        "token_file = \"st-config-test-no-such-token\"",
    );
    let config = Config::parse(&dir.path().join("config.toml"), &text).expect("valid");
    let error = config.target.token.resolve().expect_err("no such file");
    let message = error.to_string();
    assert!(message.starts_with("target.token_file: "), "{message}");
    assert!(
        message.contains("st-config-test-no-such-token"),
        "{message}"
    );
}

#[test]
fn token_file_is_looked_up_in_credentials_directory_first() {
    let _guard = CREDENTIALS_ENV
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let config_dir = tempfile::tempdir().expect("temp dir");
    let credentials = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        config_dir.path().join("st-config-test-token-b"),
        "from-config-dir",
    )
    .expect("write");
    std::fs::write(
        credentials.path().join("st-config-test-token-b"),
        "from-credentials",
    )
    .expect("write");
    std::fs::write(
        config_dir.path().join("st-config-test-token-c"),
        "only-in-config-dir",
    )
    .expect("write");
    let text_b = base_with(
        "token = \"${ST_SYNC_CONFIG_TEST_TOKEN_UNSET}\"",
        "token_file = \"st-config-test-token-b\"",
    );
    let text_c = base_with(
        "token = \"${ST_SYNC_CONFIG_TEST_TOKEN_UNSET}\"",
        "token_file = \"st-config-test-token-c\"",
    );
    let path = config_dir.path().join("config.toml");
    // SAFETY: the only tests that touch CREDENTIALS_DIRECTORY hold CREDENTIALS_ENV, and nothing
    // else in the test binary reads or writes that variable concurrently.
    unsafe { std::env::set_var("CREDENTIALS_DIRECTORY", credentials.path()) };
    let b = Config::parse(&path, &text_b);
    let c = Config::parse(&path, &text_c);
    // SAFETY: as above.
    unsafe { std::env::remove_var("CREDENTIALS_DIRECTORY") };
    let b = b.expect("valid");
    let c = c.expect("valid");
    assert_eq!(
        b.target.token.resolve().expect("readable").expose(),
        "from-credentials"
    );
    assert_eq!(
        c.target.token.resolve().expect("readable").expose(),
        "only-in-config-dir"
    );
}

#[test]
fn token_and_token_file_together_are_an_error() {
    let error = invalid(&target_with("token_file = \"tok\""));
    assert_eq!(error.key, "target.token", "{error}");
    assert_eq!(
        error.message,
        "give either target.token or target.token_file, not both"
    );
    assert_eq!(line_of(&error), 9, "{error}");
}

#[test]
fn okta_needs_exactly_one_credential() {
    let okta = |credentials: &str| {
        base_with(
            "kind = \"file\"",
            &format!(
                "kind = \"okta\"\n\n[source.okta]\norg_url = \"https://example.okta.com\"\n{credentials}"
            ),
        )
    };
    let error = invalid(&okta(""));
    assert_eq!(error.key, "source.okta", "{error}");
    let error = invalid(&okta("token = \"${OKTA}\"\nclient_id = \"0oa1\""));
    assert_eq!(error.key, "source.okta", "{error}");
    let error = invalid(&okta("client_id = \"0oa1\""));
    assert_eq!(error.key, "source.okta.private_key_file", "{error}");
    let config = valid(&okta("token = \"${ST_SYNC_CONFIG_TEST_OKTA}\""));
    let keys: Vec<&str> = config.secrets().iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["target.token", "source.okta.token"]);
}

#[test]
fn onelogin_section_is_read_with_its_defaults_and_checked() {
    let onelogin = |extra: &str| {
        base_with(
            "kind = \"file\"",
            &format!(
                "kind = \"onelogin\"\n\n[source.onelogin]\napi_url = \"https://example.onelogin.com\"\nclient_id = \"abc\"\n{extra}"
            ),
        )
    };
    let config = valid(&onelogin(
        "client_secret = \"${ST_SYNC_CONFIG_TEST_ONELOGIN}\"",
    ));
    let SourceConfig::OneLogin(source) = &config.source else {
        unreachable!("a OneLogin source")
    };
    assert_eq!(config.source.kind(), crate::model::SourceKind::OneLogin);
    assert!(!source.suspended_is_active && !source.unactivated_is_active);
    assert_eq!(source.employee_id_attribute, None);
    assert!(source.groups.is_empty());
    let keys: Vec<&str> = config.secrets().iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["target.token", "source.onelogin.client_secret"]);

    let config = valid(&onelogin(
        "client_secret_file = \"ol-secret\"\ngroups = [\"LP *\"]\nsuspended_is_active = true\nunactivated_is_active = true\nemployee_id_attribute = \"employeenumber\"",
    ));
    let SourceConfig::OneLogin(source) = &config.source else {
        unreachable!("a OneLogin source")
    };
    assert!(source.suspended_is_active && source.unactivated_is_active);
    assert_eq!(
        source.employee_id_attribute.as_deref(),
        Some("employeenumber")
    );

    assert_eq!(invalid(&onelogin("")).key, "source.onelogin");
    assert_eq!(
        invalid(&onelogin("client_secret = \"${X}\"\ngroups = [\"LP [\"]")).key,
        "source.onelogin.groups"
    );
    assert_eq!(
        invalid(&onelogin("client_secret = \"${X}\"\ntenant = \"t\"")).key,
        "source.onelogin.tenant"
    );
    let http = onelogin("client_secret = \"${X}\"").replace(
        "https://example.onelogin.com",
        "http://example.onelogin.com",
    );
    assert_eq!(invalid(&http).key, "source.onelogin.api_url");
    // Write-back names the custom attribute by its path.
    let writeback = |attribute: &str| {
        onelogin("client_secret = \"${X}\"").replace(
            "[mapping]",
            &format!("[writeback]\nattribute = \"{attribute}\"\n\n[mapping]"),
        )
    };
    valid(&writeback("custom_attributes.socialTalentId"));
    let error = invalid(&writeback("socialTalentId"));
    assert_eq!(error.key, "writeback.attribute");
    assert!(error.to_string().contains("Custom User Fields"), "{error}");
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let text = base_with(
        "kind = \"file\"",
        "kind = \"entra\"\n\n[source.entra]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"entra-sekret-PLUGH-456\"",
    )
    .replace(
        "${ST_SYNC_CONFIG_TEST_TOKEN_UNSET}",
        "inline-sekret-XYZZY-123",
    );
    let config = valid(&text);
    assert!(config.target.token.is_inline());
    assert_eq!(
        config.target.token.resolve().expect("inline").expose(),
        "inline-sekret-XYZZY-123"
    );
    let debug = format!("{config:?}");
    assert!(!debug.contains("XYZZY"), "{debug}");
    assert!(!debug.contains("PLUGH"), "{debug}");
    let pretty = format!("{config:#?}");
    assert!(!pretty.contains("XYZZY") && !pretty.contains("PLUGH"));
}

#[test]
fn errors_do_not_repeat_secret_values() {
    // A value with the wrong type next to an inline secret: the error shows neither.
    let text = target_with("burst = \"five\"").replace(
        "${ST_SYNC_CONFIG_TEST_TOKEN_UNSET}",
        "inline-sekret-XYZZY-123",
    );
    let error = invalid(&text);
    assert!(!error.to_string().contains("XYZZY"), "{error}");
}

// ─── The bundled files ──────────────────────────────────────────────────────────────────────

#[test]
fn the_packaged_configuration_names_the_services_state_directory() {
    // A command run by hand with the installed file must use the daemon's state, never start a
    // fresh ./socialtalent-sync-state.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::load(&root.join("config.example.toml")).expect("it loads");
    assert_eq!(config.state.path, Path::new("/var/lib/socialtalent-sync"));
    assert!(config.state.named);
}

#[test]
fn every_bundled_configuration_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("config.example.toml")];
    for entry in std::fs::read_dir(root.join("examples")).expect("examples/ exists") {
        let path = entry.expect("a directory entry").path();
        if path
            .extension()
            .is_some_and(|extension| extension == "toml")
        {
            files.push(path);
        }
    }
    assert!(
        files.len() >= 2,
        "no example configurations found: {files:?}"
    );
    for path in files {
        let config = Config::load(&path).unwrap_or_else(|error| unreachable!("{error}"));
        // Their source files exist where the configuration says.
        if let SourceConfig::File(file) = &config.source {
            assert!(
                file.path.exists(),
                "{}: {} is missing",
                path.display(),
                file.path.display()
            );
        }
        assert!(
            config
                .mapping
                .attributes()
                .iter()
                .any(|a| a == "udf_Customer_ID"),
            "{}",
            path.display()
        );
    }
}

#[test]
fn the_example_is_offline() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = Config::load(&root.join("examples/config.toml")).expect("loads");
    assert!(!config.reconcile.read_back);
    assert_eq!(config.source.kind(), crate::model::SourceKind::File);
    assert_eq!(config.target.base_url.scheme(), "http");
}

#[test]
fn missing_file_names_the_path() {
    let error =
        Config::load(Path::new("/nonexistent/st-sync/config.toml")).expect_err("no such file");
    assert_eq!(error.key, "(file)");
    assert!(
        error
            .to_string()
            .starts_with("/nonexistent/st-sync/config.toml: "),
        "{error}"
    );
}

#[test]
fn line_column_counts_characters() {
    let text = "a = 1\nzoë = \"Ø\"\n";
    assert_eq!(line_column(text, 0), (1, 1));
    assert_eq!(line_column(text, 6), (2, 1));
    // Byte offset of `=` on line 2: "zoë " is 5 bytes, 4 characters.
    assert_eq!(line_column(text, 11), (2, 5));
    assert_eq!(line_column(text, 10_000), (3, 1));
}

#[test]
fn a_mapping_without_user_name_is_refused() {
    let error = invalid(&base_with("userName = \"{{ user.email | lower }}\"\n", ""));
    assert_eq!(error.key, "mapping.userName");
    assert_eq!(
        error.location.map(|(line, _)| line),
        Some(11),
        "points at [mapping]: {error}"
    );
    assert!(error.message.starts_with("is required"), "{error}");
}

#[test]
fn standard_cron_weekdays_keep_their_meaning() {
    use chrono::{Datelike, TimeZone, Weekday};
    let start = chrono::Utc
        .with_ymd_and_hms(2026, 11, 26, 0, 0, 0)
        .single()
        .expect("date"); // a Thursday
    let weekdays = |expression: &str| -> Vec<Weekday> {
        let schedule = parse_cron(expression).expect("valid");
        schedule
            .after(&start)
            .take(7)
            .map(|time| time.weekday())
            .collect()
    };
    use Weekday::*;
    assert_eq!(
        weekdays("0 9 * * 1-5"),
        vec![Thu, Fri, Mon, Tue, Wed, Thu, Fri]
    );
    assert_eq!(weekdays("0 9 * * 0"), vec![Sun; 7]);
    assert_eq!(weekdays("0 9 * * 7"), vec![Sun; 7]);
    assert_eq!(
        weekdays("0 9 * * 5-7"),
        vec![Fri, Sat, Sun, Fri, Sat, Sun, Fri]
    );
    assert_eq!(
        weekdays("0 9 * * */2"),
        vec![Thu, Sat, Sun, Tue, Thu, Sat, Sun]
    );
    assert_eq!(
        weekdays("0 9 * * sat,Sun"),
        vec![Sat, Sun, Sat, Sun, Sat, Sun, Sat]
    );
    assert!(
        parse_cron("0 9 * * 8")
            .expect_err("no day 8")
            .contains("weekday field")
    );
}

// ─── One pass: every problem at once ────────────────────────────────────────────────────────

#[test]
fn every_unknown_key_is_reported_at_once() {
    let text = format!("colour = \"blue\"\n{BASE}\n[reconcile]\nreadback = true\n[sheduel]\n");
    let error = invalid(&text);
    let problems: Vec<(String, Option<(usize, usize)>)> = error
        .into_problems()
        .into_iter()
        .map(|problem| {
            assert!(
                problem.message.starts_with("unknown field"),
                "{}",
                problem.message
            );
            (problem.key, problem.location)
        })
        .collect();
    let line = |needle: &str| {
        text.lines()
            .position(|line| line.contains(needle))
            .expect("in the text")
            + 1
    };
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert_eq!(problems[0], ("colour".to_owned(), Some((1, 1))));
    assert!(
        problems.contains(&("reconcile.readback".to_owned(), Some((line("readback"), 1)))),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|(key, location)| key == "sheduel"
            && location.map(|(l, _)| l) == Some(line("[sheduel]"))),
        "{problems:?}"
    );
}

#[test]
fn every_bad_value_is_reported_at_once_with_its_place() {
    let text = format!(
        "{}\n[schedule]\ntimezone = \"Mars/Olympus\"\n[reconcile]\ndrift = \"ignore\"\npage_size = 0\n",
        base_with(
            "role = \"user\"",
            "role = { rules = \"admin\" }\ntitle = 5\n\"name.givenName\" = \"{{ user.given_name \""
        )
        .replace(
            "[target]\n",
            "[target]\nburst = 0\nupdate_with = \"post\"\n"
        )
    );
    let error = invalid(&text);
    assert_eq!(error.count(), 8, "{error}");
    let shown = error.to_string();
    assert!(shown.ends_with("8 problems in cfg.toml"), "{shown}");
    let problems = error.into_problems();
    let keys: Vec<&str> = problems
        .iter()
        .map(|problem| problem.key.as_str())
        .collect();
    for key in [
        "target.burst",
        "target.update_with",
        "schedule.timezone",
        "reconcile.drift",
        "reconcile.page_size",
        "mapping.role",
        "mapping.title",
        "mapping.\"name.givenName\"",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
    for problem in &problems {
        let (line, _) = problem.location.expect("every problem has a line");
        let written = text.lines().nth(line - 1).expect("the line");
        let leaf = problem
            .key
            .trim_end_matches('"')
            .rsplit(['.', '"'])
            .next()
            .expect("a leaf");
        assert!(
            written.contains(leaf),
            "{} points at line {line}: {written:?}",
            problem.key
        );
    }
}
