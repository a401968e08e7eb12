//! The documentation's examples run: every recipe of `docs/mapping.md`'s cookbook is loaded
//! with its sample users into a `file` source and each `preview` it shows is run through the real
//! binary and compared with what the page says it prints. A recipe that stops working, or an
//! output that changes, fails here, so the page cannot rot.

use std::path::Path;

use serde_json::Value;

/// One fenced block of a markdown page: its info string, its text, and the HTML comment on the
/// line just before its opening fence (`<!-- preview E1 -->`), if any.
#[derive(Debug)]
struct Block {
    lang: String,
    text: String,
    marker: Option<String>,
}

/// One recipe: its heading and its blocks.
#[derive(Debug)]
struct Recipe {
    title: String,
    blocks: Vec<Block>,
}

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn blocks(markdown: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut previous = "";
    let mut open: Option<Block> = None;
    for line in markdown.lines() {
        if let Some(block) = open.as_mut() {
            if line.trim_start().starts_with("```") {
                out.extend(open.take());
            } else {
                block.text.push_str(line);
                block.text.push('\n');
            }
        } else if let Some(lang) = line.trim_start().strip_prefix("```") {
            let marker = previous
                .trim()
                .strip_prefix("<!--")
                .and_then(|rest| rest.strip_suffix("-->"))
                .map(|inner| inner.trim().to_owned());
            open = Some(Block {
                lang: lang.trim().to_owned(),
                text: String::new(),
                marker,
            });
        }
        previous = line;
    }
    assert!(open.is_none(), "a fenced block is not closed");
    out
}

/// The cookbook's base configuration (the block marked `<!-- recipe base -->`) and its recipes
/// (each `### ` heading under `## Cookbook`).
fn cookbook(markdown: &str) -> (String, Vec<Recipe>) {
    let (_, cookbook) = markdown
        .split_once("\n## Cookbook")
        .expect("docs/mapping.md has a ## Cookbook section");
    let cookbook = match cookbook.find("\n## ") {
        Some(end) => &cookbook[..end],
        None => cookbook,
    };
    let mut parts = cookbook.split("\n### ");
    let intro = parts.next().unwrap_or_default();
    let base = blocks(intro)
        .into_iter()
        .find(|block| block.marker.as_deref() == Some("recipe base"))
        .expect("the cookbook's intro has a block marked <!-- recipe base -->")
        .text;
    let recipes = parts
        .map(|part| Recipe {
            title: part.lines().next().unwrap_or_default().to_owned(),
            blocks: blocks(part),
        })
        .collect();
    (base, recipes)
}

/// `overlay` on top of `base`, table by table.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(value)) => merge(inner, value),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Whether `actual` holds everything `expected` says: objects by their keys (recursively),
/// everything else equal; an expected `null` also accepts an absent key.
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(actual), Value::Object(expected)) => {
            expected.iter().all(|(key, value)| match actual.get(key) {
                Some(found) => contains(found, value),
                None => value.is_null(),
            })
        }
        _ => actual == expected,
    }
}

/// Runs `preview USER --output json` on the recipe's configuration and users.
fn preview(dir: &Path, user: &str) -> Value {
    let output = assert_cmd::Command::cargo_bin("socialtalent-sync")
        .expect("binary")
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .args([
            "--config",
            "config.toml",
            "preview",
            user,
            "--output",
            "json",
        ])
        .output()
        .expect("runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "preview {user} exited {:?}\nstdout: {stdout}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("{error}: {stdout}"))
}

/// The configuration a recipe runs with: the base, the recipe on top, a local file source, a
/// target that is never contacted (`read_back = false`) and a state in the workspace.
fn recipe_config(base: &str, recipe: &str) -> String {
    let mut config: toml::Table = toml::from_str(base).expect("the base block is TOML");
    let overlay: toml::Table = toml::from_str(recipe).expect("the recipe block is TOML");
    let fixed: toml::Table = toml::from_str(
        r#"
        [source]
        kind = "file"
        [source.file]
        path = "directory.json"
        [target]
        base_url = "http://127.0.0.1:9/scim/v2"
        token = "never-sent"
        [state]
        path = "state"
        [reconcile]
        read_back = false
        "#,
    )
    .expect("TOML");
    merge(&mut config, overlay);
    merge(&mut config, fixed);
    toml::to_string(&config).expect("serialises")
}

#[test]
fn every_cookbook_recipe_previews_as_documented() {
    let (base, recipes) = cookbook(&read("docs/mapping.md"));
    assert!(
        recipes.len() >= 10,
        "the cookbook has {} recipes; it promises at least ten",
        recipes.len()
    );
    let mut failures = Vec::new();
    for recipe in &recipes {
        let toml = recipe.blocks.iter().find(|block| block.lang == "toml");
        let users = recipe
            .blocks
            .iter()
            .find(|block| block.lang == "json" && block.marker.is_none());
        let expectations: Vec<(&str, &Block)> = recipe
            .blocks
            .iter()
            .filter_map(|block| {
                let marker = block.marker.as_deref()?;
                Some((marker.strip_prefix("preview ")?.trim(), block))
            })
            .collect();
        let (Some(toml), Some(users)) = (toml, users) else {
            failures.push(format!(
                "{}: needs a toml block and a json block of users",
                recipe.title
            ));
            continue;
        };
        if expectations.is_empty() {
            failures.push(format!(
                "{}: shows no <!-- preview USER --> output",
                recipe.title
            ));
            continue;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("config.toml"),
            recipe_config(&base, &toml.text),
        )
        .expect("write config");
        std::fs::write(dir.path().join("directory.json"), &users.text).expect("write users");
        for (user, block) in expectations {
            let expected: Value = serde_json::from_str(&block.text)
                .unwrap_or_else(|error| panic!("{}: expected output: {error}", recipe.title));
            let actual = preview(dir.path(), user);
            if !contains(&actual, &expected) {
                failures.push(format!(
                    "{}: preview {user}\nexpected (a part of): {}\nactual: {}",
                    recipe.title,
                    serde_json::to_string_pretty(&expected).expect("json"),
                    serde_json::to_string_pretty(&actual).expect("json"),
                ));
            }
        }
        assert!(
            !dir.path().join("state").exists(),
            "{}: preview created a state",
            recipe.title
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_cookbook_reader_finds_blocks_markers_and_subsets() {
    let page = "intro\n\n## Cookbook\n\n<!-- recipe base -->\n```toml\n[mapping]\n```\n\n### One\n```toml\na = 1\n```\n<!-- preview E1 -->\n```json\n{}\n```\n\n## After\n```toml\nnot = 'a recipe'\n```\n";
    let (base, recipes) = cookbook(page);
    assert_eq!(base, "[mapping]\n");
    assert_eq!(recipes.len(), 1);
    assert_eq!(recipes[0].title, "One");
    assert_eq!(recipes[0].blocks.len(), 2);
    assert_eq!(recipes[0].blocks[1].marker.as_deref(), Some("preview E1"));
    let actual = serde_json::json!({"a": {"b": 1, "c": [1, 2]}, "d": null});
    assert!(contains(&actual, &serde_json::json!({"a": {"c": [1, 2]}})));
    assert!(contains(&actual, &serde_json::json!({"e": null})));
    assert!(!contains(&actual, &serde_json::json!({"a": {"c": [2, 1]}})));
    assert!(!contains(&actual, &serde_json::json!({"a": {"b": 2}})));
}

/// Every relative link of the README and of `docs/` names a file the repository holds, and no
/// page sends readers to a document they do not have.
#[test]
fn documentation_links_resolve_inside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|ext| ext == "md") {
            pages.push(path);
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("page");
        for forbidden in ["SPEC.md", "../shared", "/work/"] {
            if text.contains(forbidden) {
                broken.push(format!("{}: mentions {forbidden}", page.display()));
            }
        }
        for (index, _) in text.match_indices("](") {
            let rest = &text[index + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            if target.contains("://") || target.starts_with('#') || target.starts_with("mailto:") {
                continue;
            }
            let file = target.split('#').next().unwrap_or_default();
            let resolved = page.parent().expect("a parent").join(file);
            if !resolved.exists() {
                broken.push(format!(
                    "{}: links to {target}, which does not exist",
                    page.display()
                ));
            }
        }
    }
    assert!(pages.len() >= 5, "README and four docs pages: {pages:?}");
    assert!(broken.is_empty(), "{broken:#?}");
}
