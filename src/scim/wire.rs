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

/// The `PUT /Users/{id}` document of an update: the account exactly as just read, with the
/// plan's `changes` applied and `active` set when given. Everything the changes do not name
/// stays as read: attributes the mapping does not manage, other schemas' extensions, and the
/// other entries of `emails` and `phoneNumbers` (see [`managed_entry`]). `meta` is left out
/// (the server manages it); so is `groups` (read-only in RFC 7643).
pub fn updated_document(
    account: &Value,
    changes: &[Change],
    extension_schema: &str,
    active: Option<bool>,
) -> Value {
    let mut document = match account {
        Value::Object(object) => object.clone(),
        _ => Map::new(),
    };
    document.remove("meta");
    document.remove("groups");
    for change in changes {
        apply_change(&mut document, change, extension_schema);
    }
    if let Some(active) = active {
        document.insert("active".into(), Value::Bool(active));
    }
    Value::Object(document)
}

/// Applies one change to a user document in place.
fn apply_change(document: &mut Map<String, Value>, change: &Change, extension_schema: &str) {
    let attribute = change.attribute.as_str();
    if attribute == "active" {
        if let Some(active) = change.to.as_bool() {
            document.insert("active".into(), Value::Bool(active));
        }
        return;
    }
    match placement(attribute) {
        Placement::Core if is_multi_valued(attribute) => {
            let mut entries = match document.remove(attribute) {
                Some(Value::Array(entries)) => entries,
                _ => Vec::new(),
            };
            replace_managed_entries(&mut entries, &change.to);
            if !entries.is_empty() {
                document.insert(attribute.to_owned(), Value::Array(entries));
            }
        }
        Placement::Core => set_or_remove(document, attribute, &change.to),
        Placement::Extension if extension_schema.is_empty() => {
            set_or_remove(document, attribute, &change.to)
        }
        Placement::Name => set_in_object(document, "name", &attribute["name.".len()..], &change.to),
        Placement::Extension => {
            set_in_object(document, extension_schema, attribute, &change.to);
            if document.contains_key(extension_schema) {
                let schemas = document
                    .entry("schemas")
                    .or_insert_with(|| json!([CORE_SCHEMA]));
                if let Value::Array(schemas) = schemas
                    && !schemas.iter().any(|schema| schema == extension_schema)
                {
                    schemas.push(Value::String(extension_schema.to_owned()));
                }
            }
        }
    }
}

/// Sets `key` to `value`, or removes it when `value` is null.
fn set_or_remove(object: &mut Map<String, Value>, key: &str, value: &Value) {
    if value.is_null() {
        object.remove(key);
    } else {
        object.insert(key.to_owned(), value.clone());
    }
}

/// Sets (or removes) `key` in the sub-object `parent` (`name`, the extension object); an
/// emptied sub-object is removed, and a missing one is created for a value.
fn set_in_object(document: &mut Map<String, Value>, parent: &str, key: &str, value: &Value) {
    if let Some(Value::Object(object)) = document.get_mut(parent) {
        set_or_remove(object, key, value);
        if object.is_empty() {
            document.remove(parent);
        }
    } else if !value.is_null() {
        let mut object = Map::new();
        object.insert(key.to_owned(), value.clone());
        document.insert(parent.to_owned(), Value::Object(object));
    }
}

/// Whether `attribute` is one of the multi-valued complex attributes whose `work` entry the
/// mapping manages.
fn is_multi_valued(attribute: &str) -> bool {
    matches!(attribute, "emails" | "phoneNumbers")
}

/// The entry of `emails` or `phoneNumbers` the mapping manages: the first of type `work` (any
/// case). Every other entry belongs to someone else and is never changed.
pub fn managed_entry(entries: &[Value]) -> Option<usize> {
    entries.iter().position(|entry| {
        entry
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|kind| kind.eq_ignore_ascii_case("work"))
    })
}

/// Puts the mapped value into a multi-valued list: a string replaces the `work` entry's value
/// in place (its `primary` flag and other fields kept), or is added as a new `work` entry,
/// primary only when no entry is; null removes the `work` entry; a list replaces the `work`
/// entries with its items. Other entries keep their value, type, flag and place.
fn replace_managed_entries(entries: &mut Vec<Value>, to: &Value) {
    let position = managed_entry(entries);
    match (to, position) {
        (Value::Null, Some(index)) => {
            entries.remove(index);
        }
        (Value::Null, None) => {}
        (Value::String(text), Some(index)) => {
            if let Some(entry) = entries[index].as_object_mut() {
                entry.insert("value".into(), Value::String(text.clone()));
            }
        }
        (Value::String(text), None) => {
            let primary = !has_primary(entries);
            entries.push(work_entry(text, primary));
        }
        (Value::Array(items), _) => {
            let at = position.unwrap_or(entries.len());
            entries.retain(|entry| {
                !entry
                    .get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|kind| kind.eq_ignore_ascii_case("work"))
            });
            let mut primary = !has_primary(entries);
            let new: Vec<Value> = items
                .iter()
                .map(|item| match item {
                    Value::String(text) => {
                        let entry = work_entry(text, primary);
                        primary = false;
                        entry
                    }
                    other => other.clone(),
                })
                .collect();
            let at = at.min(entries.len());
            entries.splice(at..at, new);
        }
        (other, Some(index)) => {
            if let Some(entry) = entries[index].as_object_mut() {
                entry.insert("value".into(), other.clone());
            }
        }
        (other, None) => entries.push(json!({"value": other, "type": "work"})),
    }
}

/// Whether any entry of a multi-valued list is marked primary.
fn has_primary(entries: &[Value]) -> bool {
    entries
        .iter()
        .any(|entry| entry.get("primary").and_then(Value::as_bool) == Some(true))
}

/// A new `work` entry.
fn work_entry(value: &str, primary: bool) -> Value {
    if primary {
        json!({"value": value, "type": "work", "primary": true})
    } else {
        json!({"value": value, "type": "work"})
    }
}

/// The `PATCH /Users/{id}` body: one `replace` per changed attribute, a `remove` per cleared one,
/// and `active` when given. For `emails` and `phoneNumbers` only the `work` entry is touched
/// (`emails[type eq "work"].value`, or an `add` of a new `work` entry, primary only when the
/// account has none); `account` is the account as read, which says whether it has one (without
/// it, a change's `from` does).
pub fn patch_document(
    changes: &[Change],
    extension_schema: &str,
    active: Option<bool>,
    account: Option<&Value>,
) -> Value {
    let mut operations = Vec::new();
    for change in changes {
        if change.attribute == "active" {
            if active.is_none()
                && let Some(value) = change.to.as_bool()
            {
                operations.push(json!({"op": "replace", "path": "active", "value": value}));
            }
            continue;
        }
        if is_multi_valued(&change.attribute) {
            patch_entries(&mut operations, change, account);
            continue;
        }
        let path = attribute_path(&change.attribute, extension_schema);
        if change.to.is_null() {
            operations.push(json!({"op": "remove", "path": path}));
        } else {
            operations.push(json!({
                "op": "replace",
                "path": path,
                "value": change.to,
            }));
        }
    }
    if let Some(active) = active {
        operations.push(json!({"op": "replace", "path": "active", "value": active}));
    }
    json!({"schemas": [PATCH_SCHEMA], "Operations": operations})
}

/// The PATCH operations of a change to `emails` or `phoneNumbers`: only the `work` entry.
fn patch_entries(operations: &mut Vec<Value>, change: &Change, account: Option<&Value>) {
    let attribute = change.attribute.as_str();
    let entries: Option<&Vec<Value>> =
        account.and_then(|account| account.get(attribute)?.as_array());
    let (has_work, primary_taken) = match (account, entries) {
        (Some(_), Some(entries)) => (managed_entry(entries).is_some(), has_primary(entries)),
        (Some(_), None) => (false, false),
        // Without the account, what we last pushed tells: our entry is the primary one.
        (None, _) => (!change.from.is_null(), !change.from.is_null()),
    };
    let work = format!("{attribute}[type eq \"work\"]");
    match &change.to {
        Value::Null => {
            if has_work {
                operations.push(json!({"op": "remove", "path": work}));
            }
        }
        Value::String(text) if has_work => operations.push(json!({
            "op": "replace",
            "path": format!("{work}.value"),
            "value": text,
        })),
        Value::String(text) => operations.push(json!({
            "op": "add",
            "path": attribute,
            "value": [work_entry(text, !primary_taken)],
        })),
        Value::Array(_) => {
            if has_work {
                operations.push(json!({"op": "remove", "path": work}));
            }
            let mut entries = Vec::new();
            replace_managed_entries(&mut entries, &change.to);
            if primary_taken {
                for entry in &mut entries {
                    if let Some(entry) = entry.as_object_mut() {
                        entry.remove("primary");
                    }
                }
            }
            if !entries.is_empty() {
                operations.push(json!({"op": "add", "path": attribute, "value": entries}));
            }
        }
        other if has_work => operations.push(json!({
            "op": "replace",
            "path": format!("{work}.value"),
            "value": other,
        })),
        other => operations.push(json!({
            "op": "add",
            "path": attribute,
            "value": [{"value": other, "type": "work"}],
        })),
    }
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
                    if let Some(work) = work_value(value) {
                        attributes.insert(key.clone(), work);
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
                // Anything else (addresses, other extensions, server-managed attributes) is
                // no mapped attribute; an update's `PUT` is built from the account as read
                // just before it, so it keeps them.
                _ => {}
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

/// The value of the managed (`work`) entry of `emails` or `phoneNumbers`.
fn work_value(value: &Value) -> Option<Value> {
    let items = value.as_array()?;
    let entry = &items[managed_entry(items)?];
    entry.get("value").filter(|value| !value.is_null()).cloned()
}

/// `emails` and `phoneNumbers` are multi-valued complex attributes; a mapped string becomes the
/// primary work entry (as a create sends it; the tests compare the serialised document with it).
#[cfg(test)]
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
        let body = patch_document(&changes, EXT, Some(true), None);
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
