//! Small helpers every HTTP edge shares for messages and bookkeeping: describing transport
//! errors, trimming bodies for messages, PEM blocks for credentials, and std locks that
//! survive a panic elsewhere.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

/// Describes a reqwest error by its kind and causes, without the URL that its `Display` adds
/// (callers name the URL themselves, without credentials).
pub fn describe_transport(error: &reqwest::Error) -> String {
    let mut message = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "connection failed".to_owned()
    } else if error.is_body() || error.is_decode() {
        "the answer was cut off".to_owned()
    } else if error.is_builder() {
        "the request cannot be built".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// `: text`, or nothing when `text` is empty.
pub fn with_colon(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// The first 200 characters of `text`.
pub fn excerpt(text: &str) -> String {
    text.chars().take(200).collect()
}

/// What kind of JSON value this is, for messages ("an array").
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Locks a std mutex whose data stays consistent across panics (the critical sections are
/// single assignments that never await).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Seconds since the epoch, now.
pub fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The PEM blocks of `text`: each block's label and its decoded content (`Err` when the base64
/// is bad). Header lines inside a block (`Proc-Type: …`) are skipped.
pub fn pem_blocks(text: &str) -> Vec<(String, Result<Vec<u8>, ()>)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines().map(str::trim) {
        if let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
        {
            current = Some((label.to_owned(), String::new()));
        } else if let Some(label) = line
            .strip_prefix("-----END ")
            .and_then(|rest| rest.strip_suffix("-----"))
        {
            if let Some((begun, base64)) = current.take()
                && begun == label
            {
                let der = STANDARD.decode(base64.as_bytes()).map_err(drop);
                blocks.push((begun, der));
            }
        } else if let Some((_, base64)) = current.as_mut()
            && !line.contains(':')
        {
            base64.push_str(line);
        }
    }
    blocks
}
