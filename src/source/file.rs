//! The `file` source: an HR export as a JSON array, JSON lines, or CSV with a header row,
//! normalised to [`SourceUser`]. Every read is full. A file that cannot be parsed as a whole
//! fails the read; a record that cannot be read is rejected on its own and reported.
//!
//! CSV cells: empty means missing; `true`/`false` are booleans; `groups` is split on `;`, and
//! any other cell holding a `;` becomes a list too.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::SourceError;
use crate::model::{IdpId, RejectedRecord, SourceKind, SourceRead, SourceUser};

/// Reads the export at `path`.
///
/// # Errors
/// [`SourceError::Unreadable`] when the file cannot be read or parsed as a whole.
pub fn read(path: &Path) -> Result<SourceRead, SourceError> {
    let unreadable = |message: String| SourceError::Unreadable {
        location: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|error| unreadable(error.to_string()))?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let records = parse_records(path, &name, &bytes)?;
    Ok(normalise(&name, records))
}

/// A raw record and where it is.
type Located = (String, Result<Map<String, Value>, String>);

fn parse_records(path: &Path, name: &str, bytes: &[u8]) -> Result<Vec<Located>, SourceError> {
    let unreadable = |message: String| SourceError::Unreadable {
        location: path.display().to_string(),
        message,
    };
    let is_csv = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("csv"));
    if is_csv {
        return parse_csv(name, bytes).map_err(unreadable);
    }
    let text =
        std::str::from_utf8(bytes).map_err(|error| unreadable(format!("not UTF-8: {error}")))?;
    let text = text.trim_start_matches('\u{feff}');
    if text.trim_start().starts_with('[') {
        let items: Vec<Value> = serde_json::from_str(text)
            .map_err(|error| unreadable(format!("not a valid JSON array: {error}")))?;
        Ok(items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                let location = format!("{name} record {}", index + 1);
                match item {
                    Value::Object(map) => (location, Ok(map)),
                    other => (
                        location,
                        Err(format!("expected an object, found {}", kind(&other))),
                    ),
                }
            })
            .collect())
    } else {
        Ok(text
            .lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(index, line)| {
                let location = format!("{name} line {}", index + 1);
                match serde_json::from_str::<Value>(line) {
                    Ok(Value::Object(map)) => (location, Ok(map)),
                    Ok(other) => (
                        location,
                        Err(format!("expected an object, found {}", kind(&other))),
                    ),
                    Err(error) => (location, Err(format!("not valid JSON: {error}"))),
                }
            })
            .collect())
    }
}

fn parse_csv(name: &str, bytes: &[u8]) -> Result<Vec<Located>, String> {
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
        let location = format!("{name} line {line}");
        let row = match row {
            Ok(row) => row,
            Err(error) => {
                records.push((location, Err(format!("not a valid CSV row: {error}"))));
                continue;
            }
        };
        let mut map = Map::new();
        for (header, cell) in headers.iter().zip(row.iter()) {
            if let Some(value) = csv_cell(header, cell) {
                map.insert(header.clone(), value);
            }
        }
        records.push((location, Ok(map)));
    }
    Ok(records)
}

fn csv_cell(header: &str, cell: &str) -> Option<Value> {
    let cell = cell.trim();
    if cell.is_empty() {
        return None;
    }
    if header == "groups" || cell.contains(';') {
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

fn normalise(name: &str, records: Vec<Located>) -> SourceRead {
    let mut read = SourceRead {
        kind: SourceKind::File,
        full: true,
        users: Vec::new(),
        removed: Vec::new(),
        rejected: Vec::new(),
        warnings: Vec::new(),
        commit: Default::default(),
    };
    let mut users: Vec<SourceUser> = Vec::new();
    let mut first_seen: HashMap<IdpId, String> = HashMap::new();
    for (location, record) in records {
        let map = match record {
            Ok(map) => map,
            Err(error) => {
                read.rejected.push(RejectedRecord {
                    idp_id: None,
                    location,
                    error,
                });
                continue;
            }
        };
        match user_from_record(map) {
            Ok(user) => {
                if let Some(first) = first_seen.get(&user.id) {
                    read.rejected.push(RejectedRecord {
                        idp_id: Some(user.id.clone()),
                        location,
                        error: format!(
                            "duplicate id {} (first seen at {first}); only the first is used",
                            user.id
                        ),
                    });
                } else {
                    first_seen.insert(user.id.clone(), location);
                    users.push(user);
                }
            }
            Err((idp_id, error)) => read.rejected.push(RejectedRecord {
                idp_id,
                location,
                error,
            }),
        }
    }
    resolve_managers(&mut users, &mut read.warnings, name);
    read.users = users.into_iter().map(Arc::new).collect();
    read
}

fn resolve_managers(users: &mut [SourceUser], warnings: &mut Vec<String>, name: &str) {
    let managers: HashMap<IdpId, crate::model::ManagerRef> = users
        .iter()
        .map(|user| (user.id.clone(), user.as_manager()))
        .collect();
    for user in users.iter_mut() {
        let Some(manager_id) = &user.manager_id else {
            continue;
        };
        match managers.get(manager_id) {
            Some(manager) if manager.id != user.id => user.manager = Some(manager.clone()),
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
}

/// Turns one record into a user, or says which field is wrong.
fn user_from_record(map: Map<String, Value>) -> Result<SourceUser, (Option<IdpId>, String)> {
    let id = match map.get("id") {
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
        match map.get(field) {
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
    let active = match map.get("active") {
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
    let groups = match map.get("groups") {
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
        attrs: map,
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
