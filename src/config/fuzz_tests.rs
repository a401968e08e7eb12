//! Property tests of the configuration loader and the mapping compiler on hostile input (issue 7,
//! "bad configuration corpus"): random mutations of valid configurations — deleted, duplicated,
//! moved and renamed keys, values of the wrong type, random characters, truncation, unbalanced
//! templates, random minijinja expressions — and random mapping specs. Nothing panics, and every
//! rejection names a key (or, for a file-level problem, a line).
//!
//! Each property runs a few hundred cases so that the module takes seconds; a failure is kept by
//! proptest under `proptest-regressions/` and replayed first on the next run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::json;

use super::*;
use crate::mapping::{Decision, Mapper, MappingSpec, RuleSpec};
use crate::model::{Attrs, IdpId, ManagerRef, SourceUser};

/// The shipped sample configuration (every key, the file source).
const EXAMPLE: &str = include_str!("../../config.example.toml");
/// The bundled example's configuration (the README's first command).
const BUNDLED: &str = include_str!("../../examples/config.toml");
/// Every section and most non-default forms: an Okta service app, write-back, PATCH, an empty
/// extension schema, a lookup rule, 6-field cron with names, a time zone, JSON logs.
const FULL: &str = r#"
[source]
kind = "okta"

[source.okta]
org_url = "https://example.okta.com"
client_id = "0oa1b2c3d4"
private_key_file = "okta-key.pem"
scopes = ["okta.users.read", "okta.groups.read", "okta.users.manage"]
suspended_is_active = true
groups = ["SocialTalent*", "LP *"]

[target]
base_url = "http://127.0.0.1:8080/scim/v2"
token_file = "scim-token"
extension_schema = ""
update_with = "patch"
deactivate_with = "patch"
requests_per_second = 2.5
burst = 3
max_in_flight = 2
timeout = "1m 30s"
max_retries = 0

[schedule]
cron = "0 */5 * * * Mon-Fri"
full_cron = "0 3 * * 7"
timezone = "Europe/Dublin"

[state]
path = "/var/lib/socialtalent-sync"

[safety]
max_deactivations = 0
max_deactivation_percent = 12.5
failure_quarantine_after = 1

[reconcile]
read_back = true
drift = "report"
orphans = "deactivate"
page_size = 1000

[writeback]
attribute = "socialTalentId"
value = "{{ scim.id }}"

[observability]
listen = ""
log_format = "json"

[scope]
when = "user.active and (user.groups | select('startingwith', 'SocialTalent') | list | length) > 0"

[mapping]
userName = "{{ (user.login or user.email) | lower }}"
"name.givenName" = "{{ user.given_name }}"
displayName = "{% if user.display_name %}{{ user.display_name }}{% else %}{{ user.given_name }} {{ user.family_name }}{% endif %}"
coreTeam = { expr = "user.department or 'Unassigned'" }
preferredLanguage = { from = "user.attrs.location", map = { "Madrid" = "es", "Paris" = "fr" }, default = "en" }
learningPaths = { expr = "user.groups | select('startingwith', 'LP ') | map('replace', 'LP ', '') | list" }
role = { rules = [
  { when = "'SocialTalent Admins' in user.groups", value = "company_admin" },
  { when = "user.attrs.isManager", value = "advisor" },
], default = "user" }

[mapping.udf]
Customer_ID = "{{ user.attrs.customerId }}"
"Cost Center" = { expr = "user.attrs.costCenter" }
"#;

const SEEDS: [&str; 3] = [EXAMPLE, BUNDLED, FULL];

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("fuzz/config.toml"), text)
}

/// The property every rejection must have: it names a key (a file-level problem may say
/// `(file)` only when it gives a line), it says what is wrong, and its message shows both.
fn check_error(text: &str, error: &ConfigError) -> Result<(), TestCaseError> {
    let shown = error.to_string();
    prop_assert!(!error.key.trim().is_empty(), "no key: {shown}");
    prop_assert!(
        error.key != "(file)" || error.location.is_some(),
        "neither a key nor a line: {shown}"
    );
    prop_assert!(!error.message.trim().is_empty(), "no message: {shown}");
    prop_assert!(
        shown.contains(&error.key),
        "the message hides the key: {shown}"
    );
    prop_assert!(
        shown.starts_with("fuzz/config.toml: "),
        "the message does not name the file: {shown}"
    );
    if let Some((line, column)) = error.location {
        let lines = text.split('\n').count();
        prop_assert!(
            line >= 1 && line <= lines && column >= 1,
            "location {line}:{column} is outside the text ({lines} lines): {shown}"
        );
    }
    Ok(())
}

// ─── Generators ────────────────────────────────────────────────────────────────────────────────

/// A TOML basic string holding `text` (escaped by the toml crate).
fn quote(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// Broken syntax to splice into expressions and templates.
fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            ")", "(", "]", "[", "|", ".", ",", "=", "{{", "}}", "{%", "%}", "{#", "#}", "'", "\"",
            " and", " is", " if", " else", "::", "@", "\\", "~", "**", " not", " in", ";", "\n",
        ])
        .prop_map(String::from),
        any::<char>().prop_map(String::from),
    ]
}

/// Random minijinja expressions over the template variables, mostly well-formed, sometimes not.
/// Numbers stay small so that nothing (`range`, `**`, string repetition) gets expensive.
fn expression() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        prop::sample::select(vec![
            "user",
            "user.id",
            "user.email",
            "user.login",
            "user.given_name",
            "user.groups",
            "user.manager",
            "user.manager.email",
            "user.attrs",
            "user.attrs.customerId",
            "user.attrs.missing",
            "user.attrs.managedTeams",
            "user.attrs.isManager",
            "user.attrs['Cost Center']",
            "user.active",
            "user.nope.deeper",
            "none",
            "true",
            "false",
            "''",
            "'LP '",
            "[]",
            "{}",
            "{'a': 1}",
            "range(3)",
            "loop",
            "self",
            "scim.id",
            "namespace()",
            "undefined_name",
            "super()",
            "caller()",
            "varargs",
            "debug()",
        ])
        .prop_map(String::from),
        (0u8..100).prop_map(|n| n.to_string()),
        (0u8..100).prop_map(|n| format!("{n}.5")),
        "[a-zA-Z ]{0,6}".prop_map(|text| format!("'{text}'")),
    ];
    let binary = prop::sample::select(vec![
        "and", "or", "==", "!=", "<", ">=", "in", "not in", "~", "+", "-", "*", "/", "//", "%",
        "**", "is", "is not",
    ]);
    let filter = prop::sample::select(vec![
        "lower",
        "upper",
        "length",
        "list",
        "first",
        "last",
        "join(',')",
        "default('x')",
        "select('startingwith', 'LP ')",
        "map('replace', 'LP ', '')",
        "map(attribute='x')",
        "int",
        "float",
        "string",
        "trim",
        "replace('a', 'b')",
        "sort",
        "unique",
        "tojson",
        "nosuchfilter",
        "reverse",
        "abs",
        "round",
        "batch(2)",
        "items",
        "dictsort",
        "safe",
        "escape",
        "title",
        "capitalize",
        "bool",
        "attr('x')",
        "indent(2)",
        "split(',')",
        "min",
        "max",
        "sum",
        "selectattr('x')",
        "format(1)",
        "defined",
        "none",
        "startingwith",
    ]);
    leaf.prop_recursive(3, 24, 3, move |inner| {
        prop_oneof![
            (inner.clone(), binary.clone(), inner.clone())
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            inner.clone().prop_map(|a| format!("({a})")),
            inner.clone().prop_map(|a| format!("not {a}")),
            inner.clone().prop_map(|a| format!("-{a}")),
            (inner.clone(), filter.clone()).prop_map(|(a, f)| format!("{a} | {f}")),
            (inner.clone(), filter.clone()).prop_map(|(a, f)| format!("{a} is {f}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}[{b}]")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a}[{b}:]")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("{a} if {b} else {c}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} if {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("[{a}, {b}]")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{{{a}: {b}}}")),
            (inner.clone(), junk()).prop_map(|(a, j)| format!("{a}{j}")),
            (junk(), inner.clone()).prop_map(|(j, a)| format!("{j}{a}")),
            inner.clone().prop_map(|a| format!("{a}.attr")),
            inner.clone().prop_map(|a| format!("{a}()")),
            inner.prop_map(|a| format!("{a}(1, x=2)")),
        ]
    })
    .boxed()
}

/// Random templates: text, output and control blocks, and their unbalanced forms.
fn template() -> BoxedStrategy<String> {
    let piece = prop_oneof![
        "[a-zA-Z .,@-]{0,8}",
        expression().prop_map(|e| format!("{{{{ {e} }}}}")),
        expression().prop_map(|e| format!("{{{{ {e}")),
        expression().prop_map(|e| format!("{{% if {e} %}}x{{% endif %}}")),
        expression().prop_map(|e| format!("{{% if {e} %}}x")),
        expression().prop_map(|e| format!("{{% for x in {e} %}}{{{{ x }}}}{{% endfor %}}")),
        expression().prop_map(|e| format!("{{% set x = {e} %}}{{{{ x }}}}")),
        expression().prop_map(|e| format!("{{% with x = {e} %}}{{{{ x }}}}{{% endwith %}}")),
        prop::sample::select(vec![
            "{% endif %}",
            "{% endfor %}",
            "{% else %}",
            "}}",
            "{{",
            "{#",
            "#}",
            "{%",
            "%}",
            "{{ }}",
            "{% %}",
            "{% raw %}",
            "{% endraw %}",
            "{% set x = %}",
            "{% macro m() %}",
            "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
            "{% block b %}",
            "{% include 'nope' %}",
            "{% include 'mapping.title' %}",
            "{% extends 'mapping.title' %}",
            "{% import 'mapping.title' as m %}",
            "{% filter upper %}x{% endfilter %}",
            "{% autoescape true %}<{% endautoescape %}",
            "{%- if true -%} x {%- endif -%}",
            "{{ user.email | lower }}",
            "{{ scim.id }}",
        ])
        .prop_map(String::from),
        junk(),
    ];
    prop::collection::vec(piece, 0..4)
        .prop_map(|pieces| pieces.concat())
        .boxed()
}

/// A value for a `key = …` line: wrong types, edge-case strings, random templates and rules.
fn value() -> BoxedStrategy<String> {
    let fixed = prop::sample::select(vec![
        "1",
        "-1",
        "0",
        "18446744073709551616",
        "1.5",
        "-0.0",
        "nan",
        "inf",
        "-inf",
        "1e400",
        "true",
        "[]",
        "[1, \"a\"]",
        "[[]]",
        "{}",
        "{ expr = 1 }",
        "{ expr = \"\" }",
        "{ rules = \"x\" }",
        "{ rules = [1] }",
        "{ rules = [{ when = \"x\" }] }",
        "{ rules = [{ when = \"x\", value = 1 }] }",
        "{ rules = [{ when = \"x\", value = \"y\", extra = 1 }] }",
        "{ from = \"x\" }",
        "{ from = \"x\", map = [] }",
        "{ from = \"x\", map = { a = 1 } }",
        "{ from = 1, map = {} }",
        "{ expr = \"a\", rules = [] }",
        "{ nothing = 1 }",
        "{ a = { b = { c = 1 } } }",
        "1979-05-27T07:32:00Z",
        "07:32:00",
        "\"\"",
        "\"   \"",
        "\"${}\"",
        "\"${UNSET_VAR_FOR_THE_FUZZ_TESTS}\"",
        "\"${A B}\"",
        "\"ftp://example.com\"",
        "\"http://example.com/v2\"",
        "\"https://\"",
        "\"https://[::1\"",
        "\"http://[::1]:8080/v2\"",
        "\"* * *\"",
        "\"61 * * * *\"",
        "\"* * * * * * * *\"",
        "\"0 0 31 2 *\"",
        "\"Mars/Olympus\"",
        "\"-5s\"",
        "\"0s\"",
        "\"999999999999999999h\"",
        "\"1 fortnight\"",
        "\"256.0.0.1:99999\"",
        "\"localhost\"",
        "\"[\"",
        "\"\\u0000\"",
        "'''multi\nline'''",
    ])
    .prop_map(String::from);
    prop_oneof![
        4 => fixed,
        1 => "[ -~]{0,12}".prop_map(|text| quote(&text)),
        1 => any::<String>().prop_map(|text| quote(&text)),
        3 => template().prop_map(|text| quote(&text)),
        2 => expression().prop_map(|e| format!("{{ expr = {} }}", quote(&e))),
        1 => (expression(), template(), template()).prop_map(|(when, value, default)| format!(
            "{{ rules = [{{ when = {}, value = {} }}], default = {} }}",
            quote(&when),
            quote(&value),
            quote(&default)
        )),
        1 => (expression(), template(), template()).prop_map(|(from, to, default)| format!(
            "{{ from = {}, map = {{ \"a\" = {} }}, default = {} }}",
            quote(&from),
            quote(&to),
            quote(&default)
        )),
    ]
    .boxed()
}

/// A key: a real one from elsewhere in the file, a near-miss, or noise.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "kind",
            "path",
            "org_url",
            "token",
            "token_file",
            "client_id",
            "private_key_file",
            "scopes",
            "base_url",
            "timeout",
            "burst",
            "cron",
            "full_cron",
            "timezone",
            "when",
            "userName",
            "\"name.givenName\"",
            "role",
            "udf",
            "value",
            "attribute",
            "listen",
            "read_back",
            "max_deactivations",
            "tenant_id",
            "client_secret",
            "expr",
            "rules",
            "\"\"",
            "\"a.b.c\"",
            "a.b",
            "source.kind",
            "mapping.udf.x",
            "tokne",
            "Kind",
        ])
        .prop_map(String::from),
        "[a-zA-Z_][a-zA-Z0-9_-]{0,10}",
    ]
}

/// A whole line to insert: a key, a table header, or noise.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        (key(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        prop::sample::select(vec![
            "[source]",
            "[source.okta]",
            "[source.entra]",
            "[source.file]",
            "[target]",
            "[schedule]",
            "[state]",
            "[safety]",
            "[reconcile]",
            "[writeback]",
            "[observability]",
            "[scope]",
            "[mapping]",
            "[mapping.udf]",
            "[mapping.role]",
            "[[mapping]]",
            "[sheduel]",
            "[]",
            "[",
            "]",
            "=",
            "= 1",
            "key =",
            "#",
            "\"unterminated = 1",
        ])
        .prop_map(String::from),
        "[ -~]{0,20}",
    ]
}

/// One edit of a configuration text.
#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(Index),
    DuplicateLine(Index),
    MoveLine(Index, Index),
    RenameKey(Index, String),
    ReplaceValue(Index, String),
    InsertLine(Index, String),
    InsertChars(Index, String),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => any::<Index>().prop_map(Mutation::DeleteLine),
        2 => any::<Index>().prop_map(Mutation::DuplicateLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::MoveLine(a, b)),
        3 => (any::<Index>(), key()).prop_map(|(i, k)| Mutation::RenameKey(i, k)),
        6 => (any::<Index>(), value()).prop_map(|(i, v)| Mutation::ReplaceValue(i, v)),
        2 => (any::<Index>(), line()).prop_map(|(i, l)| Mutation::InsertLine(i, l)),
        2 => (any::<Index>(), prop_oneof![junk(), any::<String>(), "[\\[\\]{}=\"'#.\n ]{1,4}"])
            .prop_map(|(i, s)| Mutation::InsertChars(i, s)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

/// The lines that carry something (not blank, not comments), so that edits land on keys.
fn meaningful(lines: &[String]) -> Vec<usize> {
    let indices: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| {
            let line = line.trim();
            !line.is_empty() && !line.starts_with('#')
        })
        .map(|(index, _)| index)
        .collect();
    if indices.is_empty() {
        (0..lines.len()).collect()
    } else {
        indices
    }
}

fn apply(text: &str, mutation: &Mutation) -> String {
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let pick = |lines: &[String], index: &Index| -> usize {
        let candidates = meaningful(lines);
        candidates[index.index(candidates.len())]
    };
    match mutation {
        Mutation::DeleteLine(index) => {
            let at = pick(&lines, index);
            lines.remove(at);
        }
        Mutation::DuplicateLine(index) => {
            let at = pick(&lines, index);
            let copy = lines[at].clone();
            lines.insert(at + 1, copy);
        }
        Mutation::MoveLine(from, to) => {
            let at = pick(&lines, from);
            let moved = lines.remove(at);
            let to = to.index(lines.len() + 1);
            lines.insert(to, moved);
        }
        Mutation::RenameKey(index, key) => {
            let at = pick(&lines, index);
            let line = &lines[at];
            lines[at] = if line.trim_start().starts_with('[') {
                format!("[{key}]")
            } else if let Some((_, value)) = line.split_once('=') {
                format!("{key} ={value}")
            } else {
                key.clone()
            };
        }
        Mutation::ReplaceValue(index, value) => {
            let at = pick(&lines, index);
            if let Some((key, _)) = lines[at].split_once('=') {
                lines[at] = format!("{key}= {value}");
            } else {
                lines[at] = format!("{} = {value}", lines[at].trim());
            }
        }
        Mutation::InsertLine(index, line) => {
            let at = index.index(lines.len() + 1);
            lines.insert(at, line.clone());
        }
        Mutation::InsertChars(index, chars) => {
            let text = lines.join("\n");
            let at = text.floor_char_boundary(index.index(text.len() + 1));
            return format!("{}{chars}{}", &text[..at], &text[at..]);
        }
        Mutation::Truncate(index) => {
            let text = lines.join("\n");
            let at = text.floor_char_boundary(index.index(text.len() + 1));
            return text[..at].to_owned();
        }
    }
    lines.join("\n")
}

fn mutated_config() -> impl Strategy<Value = String> {
    (
        prop::sample::select(SEEDS.to_vec()),
        prop::collection::vec(mutation(), 1..4),
    )
        .prop_map(|(seed, mutations)| {
            mutations
                .iter()
                .fold(seed.to_owned(), |text, mutation| apply(&text, mutation))
        })
}

/// An attribute name: the ones the program knows, and noise.
fn attribute() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "userName",
            "externalId",
            "name.givenName",
            "name.familyName",
            "displayName",
            "emails",
            "title",
            "coreTeam",
            "role",
            "reportsTo",
            "learningPaths",
            "teamsToManage",
            "udf_Customer_ID",
            "active",
            "schemas",
            "id",
            "",
            "name.",
            "a.b.c",
        ])
        .prop_map(String::from),
        "[a-zA-Z_. \"]{0,8}",
    ]
}

fn rule() -> impl Strategy<Value = RuleSpec> {
    prop_oneof![
        3 => template().prop_map(RuleSpec::Template),
        2 => expression().prop_map(RuleSpec::Expr),
        1 => (
            prop::collection::vec((expression(), template()), 0..3),
            prop::option::of(template()),
        )
            .prop_map(|(rules, default)| RuleSpec::Rules { rules, default }),
        1 => (
            expression(),
            prop::collection::btree_map("[A-Za-z .\"']{0,6}", template(), 0..3),
            prop::option::of(template()),
        )
            .prop_map(|(from, map, default)| RuleSpec::Lookup { from, map, default }),
    ]
}

fn mapping_spec() -> impl Strategy<Value = MappingSpec> {
    (
        prop::option::of(expression()),
        prop::collection::vec((attribute(), rule()), 0..5),
        prop::option::of(template()),
    )
        .prop_map(|(scope, rules, writeback)| MappingSpec {
            scope,
            rules: rules
                .into_iter()
                .map(|(name, rule)| {
                    let key = format!("mapping.{}", raw::quote_key(&name));
                    (name, key, rule)
                })
                .collect(),
            writeback,
        })
}

/// A random TOML value tree (for `RuleSpec::from_toml`).
fn toml_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        any::<String>().prop_map(toml::Value::String),
        prop::sample::select(vec![
            "expr", "rules", "from", "map", "default", "when", "value"
        ])
        .prop_map(|text| toml::Value::String(text.to_owned())),
        any::<i64>().prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    prop::sample::select(vec![
                        "expr", "rules", "from", "map", "default", "when", "value"
                    ])
                    .prop_map(String::from),
                    "[a-z]{1,4}",
                ],
                inner,
                0..4,
            )
            .prop_map(|map| toml::Value::Table(map.into_iter().collect())),
        ]
    })
}

/// Users that exercise the template variables: full, sparse, and odd.
fn sample_users() -> Vec<Arc<SourceUser>> {
    let attrs = |value: serde_json::Value| match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    let full = SourceUser {
        id: IdpId("00u1".into()),
        login: Some("zoe.odegard@example.com".into()),
        email: Some("Zoe.Odegard@example.com".into()),
        given_name: Some("Zoë".into()),
        family_name: Some("Ødegård".into()),
        display_name: Some("Zoë Ødegård".into()),
        active: true,
        status: Some("ACTIVE".into()),
        department: Some("Sales".into()),
        title: Some("Recruiter".into()),
        employee_id: Some("42".into()),
        manager_id: Some(IdpId("00u0".into())),
        manager: Some(std::sync::Arc::new(ManagerRef {
            id: IdpId("00u0".into()),
            login: Some("ana@example.com".into()),
            email: Some("ana@example.com".into()),
            display_name: Some("Ana".into()),
        })),
        groups: vec![
            "SocialTalent".into(),
            "LP Onboarding".into(),
            "SocialTalent Admins".into(),
        ],
        attrs: Attrs::from_map(&attrs(json!({
            "customerId": "C-1042", "isManager": true, "managedTeams": ["Sales EMEA"],
            "Cost Center": 7, "location": "Madrid", "nested": {"a": [1, {"b": null}]},
        }))),
    };
    let sparse = SourceUser {
        id: IdpId("00u2".into()),
        login: None,
        email: None,
        given_name: None,
        family_name: None,
        display_name: None,
        active: true,
        status: None,
        department: None,
        title: None,
        employee_id: None,
        manager_id: None,
        manager: None,
        groups: Vec::new(),
        attrs: Attrs::from_map(&attrs(
            json!({"managedTeams": null, "isManager": "yes", "customerId": [1, 2]}),
        )),
    };
    let inactive = SourceUser {
        id: IdpId("00u3".into()),
        active: false,
        ..full.clone()
    };
    vec![Arc::new(full), Arc::new(sparse), Arc::new(inactive)]
}

/// Maps every sample user and renders the write-back: nothing panics, and a failure names the
/// attribute.
fn exercise(mapper: &Mapper) -> Result<(), TestCaseError> {
    for user in sample_users() {
        let mapped = mapper.map(&user);
        if let Decision::Failed(error) = &mapped.decision {
            prop_assert!(!error.attribute.is_empty(), "unnamed failure: {error:?}");
            prop_assert!(!error.reason.is_empty(), "no reason: {error:?}");
        }
        if let Some(Err(error)) = mapper.render_writeback(&user, "scim-1", "zoe@example.com") {
            prop_assert_eq!(error.attribute.as_str(), "writeback");
        }
    }
    Ok(())
}

// ─── Properties ────────────────────────────────────────────────────────────────────────────────

#[test]
fn the_seeds_are_valid_so_that_mutations_start_from_a_good_file() {
    for seed in SEEDS {
        let config = parse(seed).unwrap_or_else(|error| panic!("seed rejected: {error}"));
        exercise(&config.mapping).expect("the seed's mapping maps the sample users");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn a_mutated_configuration_is_loaded_or_rejected_with_its_key(text in mutated_config()) {
        match parse(&text) {
            Ok(config) => exercise(&config.mapping)?,
            Err(error) => check_error(&text, &error)?,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_text_is_rejected_with_a_key_or_a_line(text in prop_oneof![
        any::<String>(),
        prop::collection::vec(line(), 0..12).prop_map(|lines| lines.join("\n")),
    ]) {
        match parse(&text) {
            Ok(config) => exercise(&config.mapping)?,
            Err(error) => check_error(&text, &error)?,
        }
    }

    #[test]
    fn a_random_mapping_value_is_compiled_or_rejected_with_its_key(
        seed in prop::sample::select(SEEDS.to_vec()),
        attribute in prop::sample::select(vec!["userName", "title", "role", "coreTeam", "learningPaths"]),
        rule in value(),
        scope in prop::option::of(expression()),
    ) {
        // The mapping table is replaced by userName plus one random rule, and maybe a random
        // scope, so that every case reaches the compiler.
        let head = seed.split("\n[scope]").next().unwrap_or(seed);
        let mut text = head.to_owned();
        if let Some(scope) = &scope {
            text.push_str(&format!("\n[scope]\nwhen = {}\n", quote(scope)));
        }
        text.push_str("\n[mapping]\n");
        if attribute != "userName" {
            text.push_str("userName = \"{{ user.email }}\"\n");
        }
        text.push_str(&format!("{attribute} = {rule}\n"));
        match parse(&text) {
            Ok(config) => exercise(&config.mapping)?,
            Err(error) => {
                check_error(&text, &error)?;
                prop_assert!(
                    error.key.starts_with("mapping.") || error.key.starts_with("scope")
                        || error.key.starts_with("writeback"),
                    "a mapping problem is blamed on {}: {error}", error.key
                );
                prop_assert!(error.location.is_some(), "no line for a mapping problem: {error}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn the_mapping_compiler_never_panics_and_names_the_rule(spec in mapping_spec()) {
        match Mapper::compile(&spec) {
            Ok(mapper) => exercise(&mapper)?,
            Err(error) => {
                prop_assert!(!error.message.trim().is_empty(), "no message: {error:?}");
                let known = error.key == "scope.when"
                    || error.key == "writeback.value"
                    || spec.rules.iter().any(|(_, key, _)| error.key.starts_with(key.as_str()));
                prop_assert!(known, "the error names no rule of the spec: {error:?}");
            }
        }
    }

    #[test]
    fn a_rule_table_of_any_shape_is_read_or_refused(value in toml_value()) {
        if let Err(message) = RuleSpec::from_toml(&value) {
            prop_assert!(!message.trim().is_empty());
        }
    }
}

/// A rule whose lookup table has keys of every shape still compiles (the template names are
/// built from them).
#[test]
fn lookup_keys_of_any_shape_compile() {
    let map: BTreeMap<String, String> = ["", ".", "\"", "a.b", "[0]", "é ü", "{{", "%}"]
        .iter()
        .map(|key| ((*key).to_owned(), "x".to_owned()))
        .collect();
    let spec = MappingSpec {
        scope: None,
        rules: vec![
            (
                "userName".into(),
                "mapping.userName".into(),
                RuleSpec::Template("{{ user.email }}".into()),
            ),
            (
                "title".into(),
                "mapping.title".into(),
                RuleSpec::Lookup {
                    from: "user.title".into(),
                    map,
                    default: None,
                },
            ),
        ],
        writeback: None,
    };
    let mapper = Mapper::compile(&spec).expect("compiles");
    exercise(&mapper).expect("maps");
}

// ─── Regressions found by the properties above ─────────────────────────────────────────────────

/// minijinja 2.24 panicked ("empty lexer stack") compiling an expression in which `}}` ends the
/// implicit variable block early; `check-config` (and a daemon reloading on SIGHUP) crashed.
#[test]
fn an_expression_with_a_stray_closing_brace_is_refused_not_a_panic() {
    for (line, key) in [
        ("[scope]\nwhen = \"user.active }} and true\"", "scope.when"),
        (
            "[mapping]\nuserName = { expr = \"user}} | lower\" }",
            "mapping.userName.expr",
        ),
        (
            "[mapping]\nuserName = { expr = \"user.email }} \" }",
            "mapping.userName.expr",
        ),
        (
            "[mapping]\nuserName = \"{{ user.email }}\"\nrole = { rules = [{ when = \"x }}}}\", value = \"user\" }] }",
            "mapping.role.rules[0].when",
        ),
    ] {
        let text = format!(
            "[source]\nkind = \"file\"\n[source.file]\npath = \"d.json\"\n[target]\nbase_url = \"https://x.example/v2\"\n{line}\n{}",
            if line.starts_with("[scope]") {
                "[mapping]\nuserName = \"{{ user.email }}\"\n"
            } else {
                ""
            }
        );
        let error = parse(&text).expect_err("refused");
        assert_eq!(error.key, key, "{error}");
        assert!(error.message.contains("`}}`"), "{error}");
        assert!(error.location.is_some(), "{error}");
    }
    // Braces that close a literal are not a block end.
    let text = "[source]\nkind = \"file\"\n[source.file]\npath = \"d.json\"\n[target]\nbase_url = \"https://x.example/v2\"\n[mapping]\nuserName = \"{{ user.email }}\"\nudf_x = { expr = \"{'a': {'b': '}}'}}['a']['b']\" }\n";
    let config = parse(text).unwrap_or_else(|error| panic!("valid: {error}"));
    let mapped = config.mapping.map(&sample_users()[0]);
    match mapped.decision {
        Decision::Provision(attributes) => assert_eq!(attributes["udf_x"], json!("}}")),
        other => panic!("{other:?}"),
    }
}

/// A mapping key that is empty (`"" = …`) was accepted and sent as an attribute without a name.
#[test]
fn an_empty_attribute_name_is_refused() {
    let text = "[source]\nkind = \"file\"\n[source.file]\npath = \"d.json\"\n[target]\nbase_url = \"https://x.example/v2\"\n[mapping]\nuserName = \"{{ user.email }}\"\n\"\" = \"{{ user.title }}\"\n";
    let error = parse(text).expect_err("refused");
    assert_eq!(error.key, "mapping.\"\"", "{error}");
    assert!(error.message.contains("empty"), "{error}");
}

/// A line or a table header without a name (`= 1`, `[]`) gave an error whose key was empty
/// (`cfg.toml:  (line 2, column 1): …`).
#[test]
fn a_line_without_a_key_is_blamed_on_its_table_or_its_line() {
    let base = "[source]\nkind = \"file\"\n";
    for (text, key) in [
        ("= 1\n".to_owned(), "(file)"),
        (format!("{base}= 1\n"), "source"),
        ("[]\n".to_owned(), "(file)"),
        (format!("{base}[]\n"), "source"),
    ] {
        let error = parse(&text).expect_err("refused");
        assert_eq!(error.key, key, "{text:?}: {error}");
        assert!(error.location.is_some(), "{error}");
    }
}

/// A template that includes itself, or a macro that calls itself, fails that user's mapping
/// (minijinja's recursion limit) instead of overflowing the stack of the planning thread.
#[test]
fn self_recursive_templates_fail_the_user_not_the_process() {
    for template in [
        "{% include 'mapping.title' %}",
        "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    ] {
        let text = format!(
            "[source]\nkind = \"file\"\n[source.file]\npath = \"d.json\"\n[target]\nbase_url = \"https://x.example/v2\"\n[mapping]\nuserName = \"{{{{ user.email }}}}\"\ntitle = {}\n",
            quote(template)
        );
        let config = parse(&text).unwrap_or_else(|error| panic!("valid: {error}"));
        // The planner maps on a blocking thread with the default 2 MiB stack; so does this one.
        let mapped = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || config.mapping.map(&sample_users()[0]))
            .expect("spawn")
            .join()
            .expect("no panic");
        match mapped.decision {
            Decision::Failed(error) => assert_eq!(error.attribute, "title", "{error}"),
            other => panic!("{template}: {other:?}"),
        }
    }
}
