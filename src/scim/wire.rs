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

/// The document for `POST /Users` and `PUT /Users/{id}`, as a JSON value (see [`UserDocument`]).
pub fn user_document(attributes: &Attributes, extension_schema: &str, active: bool) -> Value {
    // Serialising `Value`s and `bool`s into a `Value` cannot fail (every key is a string).
    serde_json::to_value(UserDocument::new(attributes, extension_schema, active))
        .unwrap_or(Value::Null)
}

/// The document for `POST /Users` and `PUT /Users/{id}`, serialised straight from the attributes
/// without building a JSON value first (a create is sent as `serde_json::to_vec` of it).
///
/// The keys come in the order of SPEC §2's example, which reads best: `schemas`, identity, core
/// (`userName`, `externalId`, `active`, `name`, `displayName`, `emails`, `title`), the other
/// top-level attributes in attribute order (those starting with `urn:` last), then the extension
/// object. Later parts win over earlier ones for the same key, as they always did: `active`,
/// the `name` object and the extension object over a mapped attribute of that name, and a mapped
/// top-level `schemas` over the generated one.
#[derive(Debug, Clone, Copy)]
pub struct UserDocument<'a> {
    attributes: &'a Attributes,
    extension_schema: &'a str,
    active: bool,
}

impl<'a> UserDocument<'a> {
    /// The document of `attributes`, with `active` set as given.
    pub fn new(attributes: &'a Attributes, extension_schema: &'a str, active: bool) -> Self {
        UserDocument {
            attributes,
            extension_schema,
            active,
        }
    }

    /// The top-level entries, one per key, in the order they were historically inserted (a
    /// later entry for the same key replaces the earlier one in place).
    fn entries(&self) -> Vec<(&'a str, Entry<'a>)> {
        let extension_schema = self.extension_schema;
        let mut entries: Vec<(&'a str, Entry<'a>)> = Vec::with_capacity(self.attributes.len() + 4);
        let mut put = |key: &'a str, entry: Entry<'a>| match entries
            .iter_mut()
            .find(|(existing, _)| *existing == key)
        {
            Some(slot) => slot.1 = entry,
            None => entries.push((key, entry)),
        };
        let mut has_name = false;
        let mut has_extension = false;
        for name in self.attributes.keys() {
            match placement(name) {
                Placement::Name => has_name = true,
                Placement::Extension if !extension_schema.is_empty() => has_extension = true,
                _ => {}
            }
        }
        put("schemas", Entry::Schemas { has_extension });
        for (attribute, value) in self.attributes {
            match placement(attribute) {
                Placement::Core => put(attribute, Entry::Core(attribute, value)),
                Placement::Extension if extension_schema.is_empty() => {
                    put(attribute, Entry::Plain(value))
                }
                Placement::Name | Placement::Extension => {}
            }
        }
        put("active", Entry::Active);
        if has_name {
            put("name", Entry::Name);
        }
        if has_extension {
            put(extension_schema, Entry::Extension);
        }
        entries
    }
}

/// The keys that lead the document, in this order.
const LEADING_KEYS: [&str; 8] = [
    "schemas",
    "userName",
    "externalId",
    "active",
    "name",
    "displayName",
    "emails",
    "title",
];

/// One top-level entry of a [`UserDocument`].
#[derive(Debug, Clone, Copy)]
enum Entry<'a> {
    /// The generated `schemas` list.
    Schemas { has_extension: bool },
    /// The `active` flag.
    Active,
    /// A core attribute (`emails` and `phoneNumbers` become multi-valued, see [`core_value`]).
    Core(&'a str, &'a Value),
    /// A top-level attribute sent as it is.
    Plain(&'a Value),
    /// The `name` object of the `name.*` attributes.
    Name,
    /// The extension object.
    Extension,
}

impl serde::Serialize for UserDocument<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let entries = self.entries();
        let mut map = serializer.serialize_map(Some(entries.len()))?;
        let put = |map: &mut S::SerializeMap, key: &str, entry: &Entry<'_>| match *entry {
            Entry::Schemas { has_extension } => {
                if has_extension {
                    map.serialize_entry(key, &[CORE_SCHEMA, self.extension_schema])
                } else {
                    map.serialize_entry(key, &[CORE_SCHEMA])
                }
            }
            Entry::Active => map.serialize_entry(key, &self.active),
            Entry::Core(attribute, value) => map.serialize_entry(key, &CoreValue(attribute, value)),
            Entry::Plain(value) => map.serialize_entry(key, value),
            Entry::Name => map.serialize_entry(
                key,
                &Section {
                    attributes: self.attributes,
                    placement: Placement::Name,
                },
            ),
            Entry::Extension => map.serialize_entry(
                key,
                &Section {
                    attributes: self.attributes,
                    placement: Placement::Extension,
                },
            ),
        };
        for leading in LEADING_KEYS {
            if let Some((key, entry)) = entries.iter().find(|(key, _)| *key == leading) {
                put(&mut map, key, entry)?;
            }
        }
        for urn in [false, true] {
            for (key, entry) in &entries {
                if !LEADING_KEYS.contains(key) && key.starts_with("urn:") == urn {
                    put(&mut map, key, entry)?;
                }
            }
        }
        map.end()
    }
}

/// The `name` object (sub-attributes without the `name.` prefix) or the extension object.
struct Section<'a> {
    attributes: &'a Attributes,
    placement: Placement,
}

impl serde::Serialize for Section<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for (attribute, value) in self.attributes {
            if placement(attribute) != self.placement {
                continue;
            }
            let key = match self.placement {
                Placement::Name => &attribute["name.".len()..],
                Placement::Core | Placement::Extension => attribute.as_str(),
            };
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// A core attribute's value as sent: [`core_value`] without building it.
struct CoreValue<'a>(&'a str, &'a Value);

impl serde::Serialize for CoreValue<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let CoreValue(attribute, value) = *self;
        if !matches!(attribute, "emails" | "phoneNumbers") {
            return value.serialize(serializer);
        }
        match value {
            Value::String(text) => {
                let mut seq = serializer.serialize_seq(Some(1))?;
                seq.serialize_element(&WorkEntry {
                    value: text,
                    primary: true,
                })?;
                seq.end()
            }
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for (index, item) in items.iter().enumerate() {
                    match item {
                        Value::String(text) => seq.serialize_element(&WorkEntry {
                            value: text,
                            primary: index == 0,
                        })?,
                        other => seq.serialize_element(other)?,
                    }
                }
                seq.end()
            }
            other => other.serialize(serializer),
        }
    }
}

/// `{"value": …, "type": "work", "primary": …}`.
struct WorkEntry<'a> {
    value: &'a str,
    primary: bool,
}

impl serde::Serialize for WorkEntry<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("value", self.value)?;
        map.serialize_entry("type", "work")?;
        map.serialize_entry("primary", &self.primary)?;
        map.end()
    }
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
    fn create_document_keys_come_in_the_spec_order() {
        let text = serde_json::to_string(&UserDocument::new(&zoe(), EXT, true)).expect("json");
        let keys: Vec<String> = serde_json::from_str::<Map<String, Value>>(&text)
            .expect("an object")
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            keys,
            [
                "schemas",
                "userName",
                "externalId",
                "active",
                "name",
                "emails",
                "title",
                EXT
            ]
        );
    }

    /// The document as it was built before it was serialised straight from the attributes: a
    /// JSON map filled in order (later inserts replace earlier ones), then reordered.
    fn document_built_as_a_map(
        attributes: &Attributes,
        extension_schema: &str,
        active: bool,
    ) -> Value {
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
        Value::Object(document)
    }

    /// How many keys an object's text holds, repeated ones included.
    struct KeysWritten(usize);

    impl<'de> serde::Deserialize<'de> for KeysWritten {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Count;
            impl<'de> serde::de::Visitor<'de> for Count {
                type Value = KeysWritten;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<KeysWritten, A::Error> {
                    let mut n = 0;
                    while map.next_entry::<String, serde::de::IgnoredAny>()?.is_some() {
                        n += 1;
                    }
                    Ok(KeysWritten(n))
                }
            }
            deserializer.deserialize_map(Count)
        }
    }

    #[test]
    fn the_serialised_document_holds_what_the_map_built_one_held() {
        let mut odd = zoe();
        for (name, value) in [
            ("active", json!("yes")),
            ("schemas", json!(["mine"])),
            ("name", json!("plain")),
            ("urn:other:ext:field", json!(1)),
            ("nickName", json!("Zo")),
            ("phoneNumbers", json!(["+1 555", {"value": "+2"}, "+3"])),
            ("locale", json!(null)),
        ] {
            odd.insert(name.to_owned(), value);
        }
        let mut without_name = odd.clone();
        without_name.retain(|name, _| !name.starts_with("name."));
        let mut phone_text = Attributes::new();
        phone_text.insert("phoneNumbers".into(), json!("+1 555"));
        phone_text.insert("emails".into(), json!(7));
        let sets = [zoe(), odd, without_name, phone_text, Attributes::new()];
        for attributes in &sets {
            for extension_schema in [EXT, "", "title", "active", "name", "schemas"] {
                for active in [true, false] {
                    let expected = document_built_as_a_map(attributes, extension_schema, active);
                    let text = serde_json::to_string(&UserDocument::new(
                        attributes,
                        extension_schema,
                        active,
                    ))
                    .expect("json");
                    let parsed: Value = serde_json::from_str(&text).expect("valid JSON");
                    let written: KeysWritten = serde_json::from_str(&text).expect("an object");
                    assert_eq!(
                        written.0,
                        parsed.as_object().map_or(0, Map::len),
                        "no key twice: {text}"
                    );
                    assert_eq!(parsed, expected, "{extension_schema:?}: {text}");
                    assert_eq!(
                        user_document(attributes, extension_schema, active),
                        expected
                    );
                }
            }
        }
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
