//! Keeps the configuration reference honest: every key the parser accepts is documented in
//! `docs/configuration.md` and shown in `config.example.toml`, and every key the reference
//! documents is one the parser accepts.
//!
//! The accepted keys are not listed by hand: a tracing [`serde::Deserializer`] walks
//! [`RawConfig`](super::raw::RawConfig) and records the field names serde's derive hands to
//! `deserialize_struct`, so a field added to any `Raw*` struct shows up here by itself.

use std::cell::RefCell;
use std::collections::BTreeSet;

use serde::de::value::{Error, MapDeserializer, SeqDeserializer, StrDeserializer};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use serde::forward_to_deserialize_any;

/// Every key path the parser accepts, such as `source.okta.org_url`; a free-form table (a map)
/// is recorded as `path.*`.
fn accepted_keys() -> BTreeSet<String> {
    let keys = RefCell::new(BTreeSet::new());
    let tracer = Tracer {
        path: String::new(),
        keys: &keys,
    };
    <super::raw::RawConfig as serde::Deserialize>::deserialize(tracer)
        .expect("the tracer can walk RawConfig");
    keys.into_inner()
}

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

fn read(relative: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The keys `docs/configuration.md` documents: the first cell of each table row whose first cell
/// is a backticked dotted path (`` `source.okta.org_url` ``; `` `$NAME` `` rows are environment
/// variables). `<name>` placeholders stand for a
/// free-form key and become `*`.
fn documented_keys(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| rest.split_once('`').map(|(key, _)| key))
        // Environment variables (`$NAME`) are documented in tables of their own.
        .filter(|key| !key.starts_with('$'))
        .map(|key| {
            key.split('.')
                .map(|segment| {
                    if segment.starts_with('<') {
                        "*"
                    } else {
                        segment
                    }
                })
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect()
}

/// The keys `config.example.toml` shows, set or commented out: `key = …` lines (with any
/// leading `# ` removed) under their table header.
fn example_keys(toml: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut table = String::new();
    for line in toml.lines() {
        let line = line.trim_start_matches(['#', ' ']);
        if let Some(header) = line.strip_prefix('[') {
            if let Some(end) = header.find(']') {
                table = header[..end].trim().to_owned();
            }
            continue;
        }
        let Some((key, _)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().trim_matches('"');
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.".contains(c))
        {
            continue;
        }
        keys.insert(if table.is_empty() {
            key.to_owned()
        } else {
            format!("{table}.{key}")
        });
    }
    keys
}

/// Whether `key` is covered by one of `keys` (exactly, or under a free-form table `x.*`).
fn covered(keys: &BTreeSet<String>, key: &str) -> bool {
    keys.contains(key)
        || keys.iter().any(|known| {
            known
                .strip_suffix(".*")
                .is_some_and(|table| key.starts_with(&format!("{table}.")))
        })
}

#[test]
fn the_tracer_sees_the_nested_keys() {
    let keys = accepted_keys();
    for key in [
        "source.kind",
        "source.okta.org_url",
        "source.file.list_columns",
        "safety.protect",
        "writeback.attribute",
        "mapping.*",
    ] {
        assert!(keys.contains(key), "{key} missing from {keys:?}");
    }
}

#[test]
fn every_accepted_key_is_in_the_reference_and_the_example() {
    let documented = documented_keys(&read("docs/configuration.md"));
    let example = example_keys(&read("config.example.toml"));
    let mut missing = Vec::new();
    for key in accepted_keys() {
        if !documented.contains(&key) {
            missing.push(format!("{key}: not in docs/configuration.md"));
        }
        // `mapping.*` is free-form: the example shows it by its attributes.
        if !key.ends_with(".*") && !example.contains(&key) {
            missing.push(format!("{key}: not in config.example.toml"));
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn every_documented_key_is_accepted() {
    let accepted = accepted_keys();
    let unknown: Vec<String> = documented_keys(&read("docs/configuration.md"))
        .into_iter()
        .filter(|key| !covered(&accepted, key))
        .collect();
    assert!(
        unknown.is_empty(),
        "documented but unknown to the parser: {unknown:?}"
    );
}

#[test]
fn the_key_extractors_read_what_they_should() {
    let documented = documented_keys(
        "| key | type |\n|---|---|\n| `target.burst` | integer |\n| `mapping.udf.<name>` | x |\n",
    );
    assert_eq!(
        documented,
        BTreeSet::from(["target.burst".to_owned(), "mapping.udf.*".to_owned()])
    );
    let example = example_keys("[target]\nburst = 5\n# [source.okta]\n# token = \"x\"\n");
    assert_eq!(
        example,
        BTreeSet::from(["target.burst".to_owned(), "source.okta.token".to_owned()])
    );
    let accepted = BTreeSet::from(["mapping.*".to_owned()]);
    assert!(covered(&accepted, "mapping.udf.*"));
    assert!(!covered(&accepted, "mappings.x"));
}
