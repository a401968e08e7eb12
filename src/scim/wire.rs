//! SCIM 2.0 JSON (RFC 7643 / 7644) for SocialTalent's users: mapped [`Attributes`] to the create
//! and `PUT` document, field-level changes to a `PATCH` body, and a SCIM user back to attributes.
//! Core-schema attributes go at the top level; every other one goes into the extension object
//! (or the top level when the extension schema is "").

use serde_json::{Map, Value, json};

use crate::model::{Attributes, attr};
use crate::plan::Change;

/// The SCIM core user schema.
pub const CORE_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// The SCIM PATCH message schema.
pub const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// The SCIM list response schema.
pub const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";

/// Top-level attributes of the core User schema that the mapping may set.
pub const CORE_ATTRIBUTES: [&str; 12] = [
    "userName",
    "externalId",
    "displayName",
    "nickName",
    "profileUrl",
    "title",
    "userType",
    "preferredLanguage",
    "locale",
    "timezone",
    "emails",
    "phoneNumbers",
];

/// Where an attribute travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A top-level core attribute.
    Core,
    /// A sub-attribute of the core `name` complex attribute (`name.givenName`).
    Name,
    /// An attribute of the extension schema (or top level when the schema is "").
    Extension,
}

/// Where `attribute` goes.
pub fn placement(attribute: &str) -> Placement {
    if attribute.starts_with("name.") {
        Placement::Name
    } else if CORE_ATTRIBUTES.contains(&attribute) {
        Placement::Core
    } else {
        Placement::Extension
    }
}

pub use crate::model::TargetUser;

/// The document for `POST /Users` and `PUT /Users/{id}`.
pub fn user_document(attributes: &Attributes, extension_schema: &str, active: bool) -> Value {
    let mut document = Map::new();
    let mut schemas = vec![Value::from(CORE_SCHEMA)];
    if !extension_schema.is_empty()
        && attributes
            .keys()
            .any(|name| placement(name) == Placement::Extension)
    {
        schemas.push(Value::from(extension_schema));
    }
    document.insert("schemas".into(), Value::Array(schemas));
    let mut name = Map::new();
    let mut extension = Map::new();
    for (attribute, value) in attributes {
        match placement(attribute) {
            Placement::Core => {
                document.insert(attribute.clone(), core_value(attribute, value));
            }
            Placement::Name => {
                name.insert(attribute["name.".len()..].to_owned(), value.clone());
            }
            Placement::Extension if extension_schema.is_empty() => {
                document.insert(attribute.clone(), value.clone());
            }
            Placement::Extension => {
                extension.insert(attribute.clone(), value.clone());
            }
        }
    }
    document.insert("active".into(), Value::Bool(active));
    if !name.is_empty() {
        document.insert("name".into(), Value::Object(name));
    }
    if !extension.is_empty() {
        document.insert(extension_schema.to_owned(), Value::Object(extension));
    }
    order_like_spec(document)
}

/// The `PUT /Users/{id}` document that sets our attributes and keeps what SocialTalent holds
/// beyond them: `kept` attributes (those the mapping does not manage, as read back) and `extras`
/// (other top-level attributes, such as addresses or other extensions). A PUT replaces the whole
/// account, so without this it would clear them.
pub fn user_document_keeping(
    attributes: &Attributes,
    extension_schema: &str,
    active: bool,
    kept: &Attributes,
    extras: &Map<String, Value>,
) -> Value {
    let mut merged = kept.clone();
    merged.extend(attributes.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut document = user_document(&merged, extension_schema, active);
    if let Some(object) = document.as_object_mut() {
        for (key, value) in extras {
            object.entry(key.clone()).or_insert_with(|| value.clone());
            if key.starts_with("urn:")
                && let Some(Value::Array(schemas)) = object.get_mut("schemas")
                && !schemas.iter().any(|s| s == key)
            {
                schemas.push(Value::String(key.clone()));
            }
        }
    }
    document
}

/// The `PATCH /Users/{id}` body: one `replace` per changed attribute, a `remove` per cleared one,
/// and `active` when given.
pub fn patch_document(changes: &[Change], extension_schema: &str, active: Option<bool>) -> Value {
    let mut operations = Vec::new();
    for change in changes {
        let path = attribute_path(&change.attribute, extension_schema);
        if change.to.is_null() {
            operations.push(json!({"op": "remove", "path": path}));
        } else {
            operations.push(json!({
                "op": "replace",
                "path": path,
                "value": core_value(&change.attribute, &change.to),
            }));
        }
    }
    if let Some(active) = active {
        operations.push(json!({"op": "replace", "path": "active", "value": active}));
    }
    json!({"schemas": [PATCH_SCHEMA], "Operations": operations})
}

/// The PATCH path of an attribute (`name.givenName`, `title`, `urn:…:User:coreTeam`).
pub fn attribute_path(attribute: &str, extension_schema: &str) -> String {
    if attribute == "active" {
        return attribute.to_owned();
    }
    match placement(attribute) {
        Placement::Extension if !extension_schema.is_empty() => {
            format!("{extension_schema}:{attribute}")
        }
        _ => attribute.to_owned(),
    }
}

/// Reads a SCIM user into a [`TargetUser`], giving back the attributes in mapping form.
///
/// # Errors
/// A message when `id` or `userName` is missing.
pub fn parse_user(document: &Value, extension_schema: &str) -> Result<TargetUser, String> {
    let id = document
        .get("id")
        .and_then(Value::as_str)
        .ok_or("the user has no `id`")?
        .to_owned();
    let user_name = document
        .get("userName")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("user {id} has no `userName`"))?
        .to_owned();
    let mut attributes = Attributes::new();
    let mut extras = Map::new();
    if let Some(object) = document.as_object() {
        for (key, value) in object {
            match key.as_str() {
                "name" => {
                    if let Some(name) = value.as_object() {
                        for (sub, sub_value) in name {
                            insert_read(&mut attributes, &format!("name.{sub}"), sub_value);
                        }
                    }
                }
                "emails" | "phoneNumbers" => {
                    if let Some(primary) = primary_value(value) {
                        attributes.insert(key.clone(), Value::String(primary));
                    }
                }
                _ if CORE_ATTRIBUTES.contains(&key.as_str()) => {
                    insert_read(&mut attributes, key, value)
                }
                _ if extension_schema.is_empty()
                    && !matches!(
                        key.as_str(),
                        "id" | "schemas" | "meta" | "active" | "groups" | "roles"
                    )
                    && !key.starts_with("urn:") =>
                {
                    insert_read(&mut attributes, key, value)
                }
                _ if key == extension_schema => {
                    if let Some(extension) = value.as_object() {
                        for (sub, sub_value) in extension {
                            insert_read(&mut attributes, sub, sub_value);
                        }
                    }
                }
                // Read-only or server-managed: never sent back.
                "id" | "schemas" | "meta" | "active" | "groups" => {}
                // Anything else (addresses, other extensions) is kept as it is, so that a PUT
                // that replaces the whole account does not lose it.
                _ => {
                    extras.insert(key.clone(), value.clone());
                }
            }
        }
    }
    Ok(TargetUser {
        external_id: document
            .get(attr::EXTERNAL_ID)
            .and_then(Value::as_str)
            .map(str::to_owned),
        active: document
            .get("active")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        id,
        user_name,
        attributes,
        extras,
        compacted: None,
    })
}

/// The `detail` (and `scimType`) of a SCIM error body, when it is one.
pub fn error_detail(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let detail = value.get("detail").and_then(Value::as_str);
    let scim_type = value.get("scimType").and_then(Value::as_str);
    match (detail, scim_type) {
        (Some(detail), Some(kind)) => Some(format!("{detail} ({kind})")),
        (Some(detail), None) => Some(detail.to_owned()),
        (None, Some(kind)) => Some(kind.to_owned()),
        (None, None) => None,
    }
}

fn insert_read(attributes: &mut Attributes, name: &str, value: &Value) {
    let value = match value {
        Value::Null => return,
        Value::String(text) if text.is_empty() => return,
        Value::Array(items) if items.is_empty() => return,
        Value::Array(items) => {
            let mut items = items.clone();
            items.sort_by_key(|item| {
                item.as_str()
                    .map_or_else(|| item.to_string(), str::to_owned)
            });
            items.dedup();
            Value::Array(items)
        }
        other => other.clone(),
    };
    attributes.insert(name.to_owned(), value);
}

fn primary_value(value: &Value) -> Option<String> {
    let items = value.as_array()?;
    let primary = items
        .iter()
        .find(|item| item.get("primary").and_then(Value::as_bool) == Some(true))
        .or_else(|| items.first())?;
    primary
        .get("value")
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// `emails` and `phoneNumbers` are multi-valued complex attributes; a mapped string becomes the
/// primary work entry.
fn core_value(attribute: &str, value: &Value) -> Value {
    if !matches!(attribute, "emails" | "phoneNumbers") {
        return value.clone();
    }
    match value {
        Value::String(text) => json!([{"value": text, "type": "work", "primary": true}]),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(index, item)| match item {
                    Value::String(text) => {
                        json!({"value": text, "type": "work", "primary": index == 0})
                    }
                    other => other.clone(),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Puts the keys in the order of SPEC §2's example, which reads best: schemas, identity, core,
/// then the extension.
fn order_like_spec(mut document: Map<String, Value>) -> Value {
    let order = [
        "schemas",
        "userName",
        "externalId",
        "active",
        "name",
        "displayName",
        "emails",
        "title",
    ];
    let mut ordered = Map::new();
    for key in order {
        if let Some(value) = document.remove(key) {
            ordered.insert(key.to_owned(), value);
        }
    }
    let (extensions, rest): (Vec<_>, Vec<_>) = document
        .into_iter()
        .partition(|(key, _)| key.starts_with("urn:"));
    ordered.extend(rest);
    ordered.extend(extensions);
    Value::Object(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_EXTENSION_SCHEMA as EXT;

    fn zoe() -> Attributes {
        let value = json!({
            "userName": "zoe.odegard@example.com",
            "externalId": "00u1a2b3c4",
            "name.givenName": "Zoë",
            "name.familyName": "Ødegård",
            "emails": "zoe.odegard@example.com",
            "title": "Recruiter",
            "coreTeam": "Sales",
            "role": "advisor",
            "reportsTo": "ana.li@example.com",
            "learningPaths": ["Onboarding"],
            "teamsToManage": ["Sales EMEA"],
            "udf_Customer_ID": "C-1042"
        });
        serde_json::from_value(value).expect("attributes")
    }

    #[test]
    fn create_document_matches_the_spec_example() {
        let document = user_document(&zoe(), EXT, true);
        assert_eq!(
            document,
            json!({
              "schemas": [CORE_SCHEMA, EXT],
              "userName": "zoe.odegard@example.com",
              "externalId": "00u1a2b3c4",
              "active": true,
              "name": {"givenName": "Zoë", "familyName": "Ødegård"},
              "emails": [{"value": "zoe.odegard@example.com", "type": "work", "primary": true}],
              "title": "Recruiter",
              EXT: {
                "coreTeam": "Sales", "role": "advisor", "reportsTo": "ana.li@example.com",
                "learningPaths": ["Onboarding"], "teamsToManage": ["Sales EMEA"],
                "udf_Customer_ID": "C-1042"
              }
            })
        );
    }

    #[test]
    fn empty_extension_schema_sends_top_level_attributes() {
        let document = user_document(&zoe(), "", true);
        assert_eq!(document["coreTeam"], json!("Sales"));
        assert_eq!(document["schemas"], json!([CORE_SCHEMA]));
    }

    #[test]
    fn patch_uses_urn_paths_for_extension_attributes_and_remove_for_cleared() {
        let changes = vec![
            Change {
                attribute: "coreTeam".into(),
                from: json!("Sales"),
                to: json!("Marketing"),
            },
            Change {
                attribute: "title".into(),
                from: json!("Recruiter"),
                to: Value::Null,
            },
        ];
        let body = patch_document(&changes, EXT, Some(true));
        assert_eq!(
            body["Operations"],
            json!([
                {"op": "replace", "path": format!("{EXT}:coreTeam"), "value": "Marketing"},
                {"op": "remove", "path": "title"},
                {"op": "replace", "path": "active", "value": true}
            ])
        );
    }

    #[test]
    fn a_document_reads_back_to_the_same_attributes() {
        let document = user_document(&zoe(), EXT, true);
        let mut with_id = document.clone();
        with_id["id"] = json!("abc");
        let user = parse_user(&with_id, EXT).expect("valid user");
        assert_eq!(user.attributes, zoe());
        assert!(user.active);
        assert_eq!(user.external_id.as_deref(), Some("00u1a2b3c4"));
    }

    #[test]
    fn error_detail_reads_scim_errors() {
        let body = br#"{"schemas":["urn:ietf:params:scim:api:messages:2.0:Error"],"status":"409","scimType":"uniqueness","detail":"userName taken"}"#;
        assert_eq!(
            error_detail(body).as_deref(),
            Some("userName taken (uniqueness)")
        );
        assert_eq!(error_detail(b"<html>"), None);
    }
}
