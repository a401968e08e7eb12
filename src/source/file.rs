//! The `file` source: an HR export as a JSON array, JSON lines, or CSV with a header row,
//! normalised to [`SourceUser`]. Every read is full. A file that cannot be parsed as a whole
//! fails the read; a record that cannot be read is rejected on its own and reported.
//!
//! CSV cells: empty means missing; `true`/`false` are booleans; `groups` is split on `;`, and
//! any other cell holding a `;` becomes a list too.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::SourceError;
use crate::model::{Attrs, IdpId, RejectedRecord, SourceKind, SourceRead, SourceUser};

/// Reads the export at `path`.
///
/// JSON exports are read as a stream, a batch of records at a time (converted on every
/// core): the file's text is never held whole, only the users it yields.
///
/// # Errors
/// [`SourceError::Unreadable`] when the file cannot be read or parsed as a whole.
pub fn read(path: &Path, list_columns: &[String]) -> Result<SourceRead, SourceError> {
    let unreadable = |message: String| SourceError::Unreadable {
        location: path.display().to_string(),
        message,
    };
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let is_csv = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("csv"));
    if is_csv {
        let bytes = std::fs::read(path).map_err(|error| unreadable(error.to_string()))?;
        let records = parse_csv(&bytes, list_columns).map_err(unreadable)?;
        return Ok(normalise(&name, Numbering::Line, convert_all(records)));
    }
    let file = std::fs::File::open(path).map_err(|error| unreadable(error.to_string()))?;
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, file);
    let io = |error: std::io::Error| unreadable(error.to_string());
    let head = reader.fill_buf().map_err(io)?;
    if head.starts_with(&[0xff, 0xfe]) || head.starts_with(&[0xfe, 0xff]) {
        return Err(unreadable(
            "not UTF-8: the file starts with a UTF-16 byte order mark; save it as UTF-8".into(),
        ));
    }
    if head.starts_with("\u{feff}".as_bytes()) {
        reader.consume(3);
    }
    // Blank space before the first record: skipped, its lines counted.
    let mut skipped_lines = 0;
    let first = loop {
        let buffer = reader.fill_buf().map_err(io)?;
        if buffer.is_empty() {
            break None;
        }
        let blank = buffer
            .iter()
            .take_while(|byte| byte.is_ascii_whitespace())
            .count();
        skipped_lines += buffer[..blank]
            .iter()
            .filter(|byte| **byte == b'\n')
            .count();
        if blank < buffer.len() {
            let first = buffer[blank];
            reader.consume(blank);
            break Some(first);
        }
        reader.consume(blank);
    };
    let mut batches = Batches::default();
    if first == Some(b'[') {
        let mut deserializer = serde_json::Deserializer::from_reader(reader);
        serde::Deserializer::deserialize_seq(&mut deserializer, ArrayRecords(&mut batches))
            .and_then(|()| deserializer.end())
            .map_err(|error| unreadable(format!("not a valid JSON array: {error}")))?;
        Ok(normalise(&name, Numbering::Record, batches.finish()))
    } else {
        let mut line = Vec::new();
        let mut number = skipped_lines;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(io)? == 0 {
                break;
            }
            number += 1;
            let text = std::str::from_utf8(&line)
                .map_err(|error| unreadable(format!("not UTF-8: line {number}: {error}")))?;
            let text = text.trim();
            if !text.is_empty() {
                batches.push(number, Raw::Text(text.to_owned()));
            }
        }
        Ok(normalise(&name, Numbering::Line, batches.finish()))
    }
}

/// One record as found in the file: JSON text still to parse, a CSV row already split, or a
/// row that could not be read.
enum Raw {
    Text(String),
    Json(Box<RawValue>),
    Map(Map<String, Value>),
    Bad(String),
}

/// Records collected while the file streams, converted a batch at a time.
#[derive(Default)]
struct Batches {
    pending: Vec<(usize, Raw)>,
    done: Vec<(usize, Converted)>,
}

impl Batches {
    const SIZE: usize = 1024;

    fn push(&mut self, number: usize, raw: Raw) {
        self.pending.push((number, raw));
        if self.pending.len() >= Self::SIZE {
            let pending = std::mem::take(&mut self.pending);
            self.done.extend(convert_all(pending));
        }
    }

    fn finish(mut self) -> Vec<(usize, Converted)> {
        let pending = std::mem::take(&mut self.pending);
        self.done.extend(convert_all(pending));
        self.done
    }
}

/// Feeds the elements of a top-level JSON array to [`Batches`] as they are parsed.
struct ArrayRecords<'a>(&'a mut Batches);

impl<'de> serde::de::Visitor<'de> for ArrayRecords<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("an array of records")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut number = 0;
        while let Some(record) = seq.next_element::<Box<RawValue>>()? {
            number += 1;
            self.0.push(number, Raw::Json(record));
        }
        Ok(())
    }
}

/// How records are numbered in messages: by position in a JSON array, or by line.
#[derive(Clone, Copy)]
enum Numbering {
    Record,
    Line,
}

impl Numbering {
    fn location(self, name: &str, number: usize) -> String {
        match self {
            Numbering::Record => format!("{name} record {number}"),
            Numbering::Line => format!("{name} line {number}"),
        }
    }
}

/// Reads a CSV export; the cells of `list_columns` are lists separated by `;`, every other cell
/// is one value (a title such as "Director; Sales" stays one text).
fn parse_csv(bytes: &[u8], list_columns: &[String]) -> Result<Vec<(usize, Raw)>, String> {
    let bytes = bytes.strip_prefix("\u{feff}".as_bytes()).unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(bytes);
    let headers: Vec<String> = reader
        .headers()
        .map_err(|error| format!("cannot read the CSV header row: {error}"))?
        .iter()
        .map(|header| header.trim().to_owned())
        .collect();
    if !headers.iter().any(|header| header == "id") {
        return Err("the CSV header row has no `id` column".into());
    }
    let mut records = Vec::new();
    for (index, row) in reader.records().enumerate() {
        let line = index + 2;
        let row = match row {
            Ok(row) => row,
            Err(error) => {
                records.push((line, Raw::Bad(format!("not a valid CSV row: {error}"))));
                continue;
            }
        };
        let mut map = Map::new();
        for (header, cell) in headers.iter().zip(row.iter()) {
            let is_list = header == "groups" || list_columns.iter().any(|column| column == header);
            if let Some(value) = csv_cell(cell, is_list) {
                map.insert(header.clone(), value);
            }
        }
        records.push((line, Raw::Map(map)));
    }
    Ok(records)
}

fn csv_cell(cell: &str, is_list: bool) -> Option<Value> {
    let cell = cell.trim();
    if cell.is_empty() {
        return None;
    }
    if is_list {
        let items: Vec<Value> = cell
            .split(';')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(Value::from)
            .collect();
        return Some(Value::Array(items));
    }
    match cell.to_ascii_lowercase().as_str() {
        "true" => Some(Value::Bool(true)),
        "false" => Some(Value::Bool(false)),
        _ => Some(Value::String(cell.to_owned())),
    }
}

/// A record turned into a user, or why not (with the id when it could be read). Users are
/// put in their `Arc` at once: moving 100,000 of them into one later would hold both copies.
type Converted = Result<Arc<SourceUser>, (Option<IdpId>, String)>;

fn convert(raw: Raw) -> Converted {
    let parsed = match raw {
        Raw::Map(map) => return user_from_record(map).map(Arc::new),
        Raw::Bad(error) => return Err((None, error)),
        Raw::Text(text) => user_from_json(&text),
        Raw::Json(record) => user_from_json(record.get()),
    };
    parsed.map(Arc::new)
}

/// Converts the records, on every core for large files; the result keeps the file's order.
fn convert_all(records: Vec<(usize, Raw)>) -> Vec<(usize, Converted)> {
    const PARALLEL_FROM: usize = 2_000;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if records.len() < PARALLEL_FROM || threads < 2 {
        return records
            .into_iter()
            .map(|(number, raw)| (number, convert(raw)))
            .collect();
    }
    let chunk = records.len().div_ceil(threads);
    let mut parts: Vec<Vec<(usize, Raw)>> = Vec::new();
    let mut records = records.into_iter();
    loop {
        let part: Vec<_> = records.by_ref().take(chunk).collect();
        if part.is_empty() {
            break;
        }
        parts.push(part);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| {
                scope.spawn(move || {
                    part.into_iter()
                        .map(|(number, raw)| (number, convert(raw)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| match handle.join() {
                Ok(converted) => converted,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

fn normalise(name: &str, numbering: Numbering, converted: Vec<(usize, Converted)>) -> SourceRead {
    let mut read = SourceRead {
        kind: SourceKind::File,
        full: true,
        users: Vec::new(),
        removed: Vec::new(),
        rejected: Vec::new(),
        warnings: Vec::new(),
        reasons: Default::default(),
        commit: Default::default(),
    };
    let mut users: Vec<Arc<SourceUser>> = Vec::with_capacity(converted.len());
    let mut first_seen: HashMap<IdpId, usize> = HashMap::with_capacity(converted.len());
    for (number, user) in converted {
        match user {
            Ok(user) => {
                if let Some(first) = first_seen.get(&user.id) {
                    read.rejected.push(RejectedRecord {
                        idp_id: Some(user.id.clone()),
                        location: numbering.location(name, number),
                        error: format!(
                            "duplicate id {} (first seen at {}); only the first is used",
                            user.id,
                            numbering.location(name, *first)
                        ),
                    });
                } else {
                    first_seen.insert(user.id.clone(), number);
                    users.push(user);
                }
            }
            Err((idp_id, error)) => read.rejected.push(RejectedRecord {
                idp_id,
                location: numbering.location(name, number),
                error,
            }),
        }
    }
    drop(first_seen);
    resolve_managers(&mut users, &mut read.warnings, name);
    read.users = users;
    read
}

fn resolve_managers(users: &mut [Arc<SourceUser>], warnings: &mut Vec<String>, name: &str) {
    let index: HashMap<&str, usize> = users
        .iter()
        .enumerate()
        .map(|(position, user)| (user.id.0.as_str(), position))
        .collect();
    // (report, manager) positions; the references are filled in once the index is gone.
    let mut resolved: Vec<(usize, usize)> = Vec::new();
    for (position, user) in users.iter().enumerate() {
        let Some(manager_id) = &user.manager_id else {
            continue;
        };
        match index.get(manager_id.0.as_str()) {
            Some(&manager) if manager != position => resolved.push((position, manager)),
            Some(_) => warnings.push(format!(
                "{name}: user {} names itself as its manager; ignored",
                user.id
            )),
            None => warnings.push(format!(
                "{name}: user {} has manager_id {manager_id}, which matches nobody; provisioned without a manager",
                user.id
            )),
        }
    }
    drop(index);
    // One reference per manager, shared by its reports.
    let mut references: HashMap<usize, Arc<crate::model::ManagerRef>> = HashMap::new();
    for (position, manager) in resolved {
        let reference = references
            .entry(manager)
            .or_insert_with(|| users[manager].as_manager())
            .clone();
        // Nothing else holds the users yet, so this never copies.
        Arc::make_mut(&mut users[position]).manager = Some(reference);
    }
}

/// Turns one record into a user, or says which field is wrong.
fn user_from_record(map: Map<String, Value>) -> Result<SourceUser, (Option<IdpId>, String)> {
    user_from_fields(|key| map.get(key), || Attrs::from_map(&map))
}

/// Turns one JSON record into a user without building a map of it: only the fields
/// [`SourceUser`] has slots for are parsed, and `attrs` is the record's own text, compacted.
fn user_from_json(text: &str) -> Result<SourceUser, (Option<IdpId>, String)> {
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<Value>(text) {
            Ok(other) => (None, format!("expected an object, found {}", kind(&other))),
            Err(error) => (None, format!("not valid JSON: {error}")),
        });
    }
    let known: Known =
        serde_json::from_str(text).map_err(|error| (None, format!("not valid JSON: {error}")))?;
    // The attributes are checked before the record is accepted: a value JSON's syntax allows
    // but a map cannot hold (a lone surrogate, a number beyond f64) rejects the record, as
    // parsing it whole would.
    let attrs = Attrs::from_object_text(compact(text))
        .map_err(|error| (known.id(), format!("not valid JSON: {error}")))?;
    user_from_fields(|key| known.get(key), || attrs)
}

/// The record fields [`SourceUser`] has slots for.
const KNOWN: [&str; 13] = [
    "id",
    "login",
    "email",
    "given_name",
    "family_name",
    "display_name",
    "active",
    "status",
    "department",
    "title",
    "employee_id",
    "manager_id",
    "groups",
];

/// The values of the [`KNOWN`] fields of one record (a repeated key's last value wins, as
/// in a parsed map); every other value is skipped unparsed.
#[derive(Default)]
struct Known([Option<Value>; KNOWN.len()]);

impl Known {
    /// The record's id, when it reads as one (for messages about a rejected record).
    fn id(&self) -> Option<IdpId> {
        match self.get("id")? {
            Value::String(text) if !text.trim().is_empty() => Some(IdpId(text.trim().to_owned())),
            Value::Number(number) => Some(IdpId(number.to_string())),
            _ => None,
        }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        let slot = KNOWN.iter().position(|known| *known == key)?;
        self.0[slot].as_ref()
    }
}

impl<'de> serde::Deserialize<'de> for Known {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Known, D::Error> {
        struct KnownVisitor;
        impl<'de> serde::de::Visitor<'de> for KnownVisitor {
            type Value = Known;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("a record object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Known, A::Error> {
                let mut known = Known::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match KNOWN.iter().position(|name| *name == key) {
                        Some(slot) => known.0[slot] = Some(map.next_value()?),
                        None => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(known)
            }
        }
        deserializer.deserialize_map(KnownVisitor)
    }
}

/// JSON text without the blank space between tokens (strings are copied as they are).
fn compact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for character in text.chars() {
        if in_string {
            out.push(character);
            if escaped {
                escaped = false;
            } else if character == '\\' {
                escaped = true;
            } else if character == '"' {
                in_string = false;
            }
        } else if character == '"' {
            in_string = true;
            out.push(character);
        } else if !character.is_whitespace() {
            out.push(character);
        }
    }
    out
}

/// Builds a user from a record's fields (`get`) and its attributes (`attrs`, built only for
/// a valid record), or says which field is wrong.
fn user_from_fields<'a>(
    get: impl Fn(&str) -> Option<&'a Value>,
    attrs: impl FnOnce() -> Attrs,
) -> Result<SourceUser, (Option<IdpId>, String)> {
    let id = match get("id") {
        Some(Value::String(text)) if !text.trim().is_empty() => IdpId(text.trim().to_owned()),
        Some(Value::Number(number)) => IdpId(number.to_string()),
        Some(Value::Null) | None => return Err((None, "the record has no `id`".into())),
        Some(other) => {
            return Err((
                None,
                format!("field `id` must be a string, found {}", kind(other)),
            ));
        }
    };
    let fail = |message: String| (Some(id.clone()), message);
    let text = |field: &str| -> Result<Option<String>, (Option<IdpId>, String)> {
        match get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.trim().to_owned())),
            Some(Value::Number(number)) => Ok(Some(number.to_string())),
            Some(other) => Err(fail(format!(
                "field `{field}` must be a string, found {}",
                kind(other)
            ))),
        }
    };
    let status = text("status")?;
    let active = match get("active") {
        None | Some(Value::Null) => match &status {
            Some(status) => matches!(status.to_ascii_lowercase().as_str(), "active" | "enabled"),
            None => true,
        },
        Some(Value::Bool(flag)) => *flag,
        Some(Value::String(text)) => match text.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => true,
            "false" | "no" | "0" => false,
            other => {
                return Err(fail(format!(
                    "field `active` must be true or false, found {other:?}"
                )));
            }
        },
        Some(Value::Number(number)) if number.as_u64() == Some(1) => true,
        Some(Value::Number(number)) if number.as_u64() == Some(0) => false,
        Some(other) => {
            return Err(fail(format!(
                "field `active` must be true or false, found {}",
                kind(other)
            )));
        }
    };
    let groups = match get("groups") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(text)) => text
            .split(';')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Ok(text.clone()),
                other => Err(fail(format!(
                    "field `groups` must hold strings, found {}",
                    kind(other)
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(fail(format!(
                "field `groups` must be a list of strings, found {}",
                kind(other)
            )));
        }
    };
    Ok(SourceUser {
        login: text("login")?,
        email: text("email")?,
        given_name: text("given_name")?,
        family_name: text("family_name")?,
        display_name: text("display_name")?,
        active,
        status: status.or_else(|| Some(if active { "active" } else { "inactive" }.to_owned())),
        department: text("department")?,
        title: text("title")?,
        employee_id: text("employee_id")?,
        manager_id: text("manager_id")?.map(IdpId),
        manager: None,
        groups,
        id,
        attrs: attrs(),
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
