//! Keeps the configuration reference honest: every key the parser accepts is documented in
//! `docs/configuration.md` and shown in `config.example.toml`, and every key the reference
//! documents is one the parser accepts.
//!
//! The accepted keys are not listed by hand: [`accepted_keys`] traces
//! [`RawConfig`](super::raw::RawConfig)'s serde derive, so a field added to any `Raw*` struct
//! shows up here by itself.

use std::collections::BTreeSet;

use super::raw::accepted_keys;

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
        if !documented.contains(key) {
            missing.push(format!("{key}: not in docs/configuration.md"));
        }
        // `mapping.*` is free-form: the example shows it by its attributes.
        if !key.ends_with(".*") && !example.contains(key) {
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
        .filter(|key| !covered(accepted, key))
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
