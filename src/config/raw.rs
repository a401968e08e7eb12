//! The configuration as written: serde structures with unknown keys rejected, plus the helpers
//! that find a key's line and column in the text for error messages.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use serde::Deserialize;
use serde::de::value::{Error, MapDeserializer, SeqDeserializer, StrDeserializer};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::forward_to_deserialize_any;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub source: RawSource,
    pub target: RawTarget,
    #[serde(default)]
    pub schedule: RawSchedule,
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub safety: RawSafety,
    #[serde(default)]
    pub reconcile: RawReconcile,
    pub writeback: Option<RawWriteback>,
    #[serde(default)]
    pub observability: RawObservability,
    #[serde(default)]
    pub scope: RawScope,
    pub mapping: RawMapping,
}

/// `[mapping]`: attribute name → rule, plus the `udf` sub-table.
pub(super) type RawMapping = BTreeMap<String, Spanned<toml::Value>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub kind: String,
    pub okta: Option<RawOkta>,
    pub entra: Option<RawEntra>,
    pub onelogin: Option<RawOneLogin>,
    pub file: Option<RawFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOkta {
    pub org_url: String,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub client_id: Option<String>,
    pub private_key_file: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub suspended_is_active: Option<bool>,
    pub groups: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEntra {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    pub certificate_file: Option<String>,
    pub private_key_file: Option<String>,
    pub extra_attributes: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    pub nested_groups: Option<bool>,
    pub graph_url: Option<String>,
    pub login_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOneLogin {
    pub api_url: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<String>,
    pub groups: Option<Vec<String>>,
    pub suspended_is_active: Option<bool>,
    pub unactivated_is_active: Option<bool>,
    pub employee_id_attribute: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub path: String,
    pub list_columns: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTarget {
    pub base_url: String,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub extension_schema: Option<String>,
    pub update_with: Option<String>,
    pub deactivate_with: Option<String>,
    pub requests_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub max_in_flight: Option<usize>,
    pub timeout: Option<String>,
    pub max_retries: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    pub cron: Option<String>,
    pub full_cron: Option<String>,
    pub timezone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    pub path: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSafety {
    pub max_deactivations: Option<usize>,
    pub max_deactivation_percent: Option<f64>,
    pub failure_quarantine_after: Option<u32>,
    pub protect: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReconcile {
    pub read_back: Option<bool>,
    pub drift: Option<String>,
    pub orphans: Option<String>,
    pub page_size: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWriteback {
    pub attribute: String,
    pub value: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawObservability {
    pub listen: Option<String>,
    pub log_format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScope {
    pub when: Option<String>,
}

/// Every key path the parser accepts, such as `source.okta.org_url`; a free-form table (a map)
/// is recorded as `path.*`. Traced once from [`RawConfig`]'s serde derive (the field names it
/// hands to `deserialize_struct`), so it cannot drift from the structs. Empty if the tracer
/// meets a type it does not know (a test keeps that from happening).
pub(super) fn accepted_keys() -> &'static BTreeSet<String> {
    static KEYS: OnceLock<BTreeSet<String>> = OnceLock::new();
    KEYS.get_or_init(|| {
        let keys = RefCell::new(BTreeSet::new());
        let tracer = Tracer {
            path: String::new(),
            keys: &keys,
        };
        match <RawConfig as Deserialize>::deserialize(tracer) {
            Ok(_) => keys.into_inner(),
            Err(_) => BTreeSet::new(),
        }
    })
}

/// A [`serde::Deserializer`] that hands every struct all of its fields, with empty values, and
/// records the key paths it was asked for.
struct Tracer<'a> {
    path: String,
    keys: &'a RefCell<BTreeSet<String>>,
}

impl Tracer<'_> {
    fn child(&self, field: &str) -> String {
        if self.path.is_empty() {
            field.to_owned()
        } else {
            format!("{}.{field}", self.path)
        }
    }
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
        Err(de::Error::custom(format!(
            "{}: a type the tracer does not know; teach docs_tests.rs about it",
            self.path
        )))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // A struct is a table, not a key: its fields are the keys.
        self.keys.borrow_mut().remove(&self.path);
        for field in fields {
            self.keys.borrow_mut().insert(self.child(field));
        }
        visitor.visit_map(Fields {
            tracer: &self,
            fields,
            next: 0,
        })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.keys.borrow_mut().remove(&self.path);
        self.keys.borrow_mut().insert(self.child("*"));
        visitor.visit_map(MapDeserializer::new(std::iter::empty::<(&str, &str)>()))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_seq(SeqDeserializer::new(std::iter::empty::<&str>()))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str("")
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_bool(false)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_u64(1)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_i64(1)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(1.0)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_f64(1.0)
    }

    forward_to_deserialize_any! {
        i8 i16 i32 i128 u128 char bytes byte_buf unit unit_struct newtype_struct tuple
        tuple_struct enum identifier ignored_any
    }
}

/// Hands a struct's visitor every one of its fields, each with a tracer for its value.
struct Fields<'t, 'k> {
    tracer: &'t Tracer<'k>,
    fields: &'static [&'static str],
    next: usize,
}

impl<'de> MapAccess<'de> for Fields<'_, '_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(field) = self.fields.get(self.next) else {
            return Ok(None);
        };
        let key: StrDeserializer<'_, Error> = field.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let field = self.fields[self.next];
        self.next += 1;
        seed.deserialize(Tracer {
            path: self.tracer.child(field),
            keys: self.tracer.keys,
        })
    }
}

/// The unknown keys of a configuration, every one of them (serde stops at the first): the key
/// paths in `table` that [`accepted_keys`] does not know, with the keys their table accepts.
pub(super) fn unknown_keys(table: &toml::Table) -> Vec<(String, Vec<String>)> {
    let accepted = accepted_keys();
    if accepted.is_empty() {
        return Vec::new();
    }
    let mut unknown = Vec::new();
    walk(accepted, table, &[], &mut unknown);
    unknown
}

fn walk(
    accepted: &BTreeSet<String>,
    table: &toml::Table,
    path: &[String],
    unknown: &mut Vec<(String, Vec<String>)>,
) {
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{}.", path.join("."))
    };
    if accepted.contains(&format!("{prefix}*")) {
        return;
    }
    // The keys this table accepts: the next segment of every accepted path under it.
    let children: BTreeSet<&str> = accepted
        .iter()
        .filter_map(|key| key.strip_prefix(prefix.as_str()))
        .filter_map(|rest| rest.split('.').next())
        .collect();
    for (key, value) in table {
        let mut child = path.to_vec();
        child.push(key.clone());
        if !children.contains(key.as_str()) {
            unknown.push((
                child
                    .iter()
                    .map(|segment| quote_key(segment))
                    .collect::<Vec<_>>()
                    .join("."),
                children.iter().map(|name| (*name).to_owned()).collect(),
            ));
        } else if let toml::Value::Table(inner) = value {
            walk(accepted, inner, &child, unknown);
        }
    }
}

/// Quotes a TOML key segment when it needs quotes (`name.givenName` → `"name.givenName"`).
pub(super) fn quote_key(segment: &str) -> String {
    if !segment.is_empty()
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        segment.to_owned()
    } else {
        format!("\"{segment}\"")
    }
}

/// Splits a key path such as `mapping."name.givenName".rules[1].when` into bare segments.
fn segments(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in key.chars() {
        match c {
            '"' => quoted = !quoted,
            '.' if !quoted => out.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    out.push(current);
    out.into_iter()
        .map(|segment| match segment.find('[') {
            Some(index) => segment[..index].to_owned(),
            None => segment,
        })
        .filter(|segment| !segment.is_empty())
        .collect()
}

fn header_of(line: &str) -> Option<Vec<String>> {
    let inner = line.trim().strip_prefix('[')?;
    let inner = inner.trim_start_matches('[');
    let end = inner.find(']')?;
    Some(
        segments(&inner[..end].replace(' ', ""))
            .into_iter()
            .collect(),
    )
}

/// The key of a `key = value` line as written (quotes kept, so `"name.givenName"` stays one
/// segment for [`segments`]).
fn raw_line_key(line: &str) -> Option<&str> {
    let trimmed = line.trim_start();
    if trimmed.starts_with('#') || trimmed.starts_with('[') {
        return None;
    }
    let end = trimmed.find('=')?;
    Some(trimmed[..end].trim())
}

fn line_key(line: &str) -> Option<String> {
    raw_line_key(line).map(|key| key.trim_matches('"').to_owned())
}

/// Finds the line and column of `key` (a dotted path) in the TOML text: the key's own line when
/// found in its table, else the table's header.
pub(super) fn locate_key(text: &str, key: &str) -> Option<(usize, usize)> {
    let wanted = segments(key);
    let mut best: Option<(usize, usize, usize)> = None; // (matched segments, line, column)
    let mut section: Vec<String> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if let Some(header) = header_of(line) {
            section = header;
            if wanted.starts_with(&section) && best.is_none_or(|b| section.len() > b.0) {
                let column = line.len() - line.trim_start().len() + 1;
                best = Some((section.len(), index + 1, column));
            }
            continue;
        }
        let Some(line_key) = raw_line_key(line) else {
            continue;
        };
        let mut full = section.clone();
        full.extend(segments(line_key));
        if wanted.starts_with(&full) && best.is_none_or(|b| full.len() > b.0) {
            let column = line.len() - line.trim_start().len() + 1;
            best = Some((full.len(), index + 1, column));
        }
    }
    best.map(|(_, line, column)| (line, column))
}

/// Builds the key path of a TOML deserialisation error from the enclosing table header and the
/// key under the error's span.
pub(super) fn key_of_toml_error(text: &str, error: &toml::de::Error) -> String {
    let Some(span) = error.span() else {
        return "(file)".into();
    };
    let start = text.floor_char_boundary(span.start.min(text.len()));
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = &text[line_start
        ..text[line_start..]
            .find('\n')
            .map_or(text.len(), |i| line_start + i)];
    // An error inside a table header (an unknown table such as `[sheduel]`) is about that table.
    if let Some(header) = header_of(line).filter(|header| !header.is_empty()) {
        return header.join(".");
    }
    let mut section = String::new();
    for line in text[..line_start].lines() {
        if let Some(header) = header_of(line) {
            section = header.join(".");
        }
    }
    let end = text.floor_char_boundary(span.end.min(text.len()));
    let under = text[start..end].trim();
    // An unknown or mistyped key's span covers the key (or its value); a key looks like one.
    // A line such as `= 1` has an empty key: name its table (or the line) instead.
    let key_here = line_key(line).filter(|key| !key.is_empty());
    let leaf = if !under.is_empty()
        && under
            .trim_matches('"')
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && !under.starts_with('[')
        && key_here.as_deref() == Some(under.trim_matches('"'))
    {
        Some(under.trim_matches('"').to_owned())
    } else {
        key_here
    };
    match (section.is_empty(), leaf) {
        (true, Some(leaf)) => leaf,
        (false, Some(leaf)) => format!("{section}.{leaf}"),
        (false, None) => section,
        (true, None) => "(file)".into(),
    }
}
