//! The one redaction step every edge uses before text leaves the process.
//!
//! The process registers every secret it knows: a configured secret when it is resolved
//! ([`register_secret`], called by `SecretSetting::resolve`), and every token or assertion it
//! obtains or makes ([`register_issued`]: access tokens, client assertions). [`scrub`] then
//! removes from a text, in this order:
//!
//! 1. every registered value, in plain form, URL-encoded, JSON-escaped and base64-encoded
//!    (standard and URL-safe, at any of the three byte alignments, so the secret is found
//!    inside a longer encoded text such as `Basic base64(id:secret)` too); a PEM secret
//!    (base64 already) in plain form, JSON-escaped and line by line;
//! 2. the value of any `Authorization`, `Proxy-Authorization`, `Cookie`, `Set-Cookie`, `DPoP`,
//!    `client_secret`, `client_assertion`, `access_token`, `refresh_token`, `id_token` or
//!    `password` header, form field, query parameter or JSON member;
//! 3. any credential after an authentication scheme (`Bearer`, `SSWS`, `DPoP`, `Basic`);
//! 4. any JWT-shaped string (three base64url segments separated by dots, starting `eyJ`) and
//!    the base64 form of one;
//!
//! and before all of these, any run of 40 or more base64 characters whose decoded text holds
//! something the steps above remove (a gateway's base64 trace of a request).
//!
//! Each removed stretch becomes `***`. Where it runs: [`read_body`] scrubs an error answer as
//! it is read from the network, so every message built from it is clean; the log writer
//! ([`Redacting`]) scrubs every log line at every level; the state scrubs run and failure
//! records before it stores them. A new edge that reads answers with [`read_body`] and logs
//! through `tracing` cannot leak what it was sent.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, LazyLock, RwLock};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use regex::Regex;

/// What a removed stretch becomes.
pub const MASK: &str = "***";

/// Registered values shorter than this are not redacted: they would mask ordinary words.
/// (A configured secret that short is refused as too weak long before it is sent.)
const MIN_SECRET_LEN: usize = 6;

/// How many issued tokens and assertions are remembered; older ones have expired. (Every JWT
/// is removed by shape anyway; this catches their encoded forms.)
const ISSUED_KEPT: usize = 64;

/// The secrets the process knows, each with its forms, and a matcher over all the forms.
struct Registry {
    /// Configured secrets, kept for the process's life.
    lasting: Vec<(String, Vec<String>)>,
    /// Issued tokens and assertions, newest last.
    issued: VecDeque<(String, Vec<String>)>,
    /// Matches every form of every value above; `None` while there is none.
    matcher: Option<Arc<AhoCorasick>>,
    /// Whether a value was registered since `matcher` was built. The matcher is rebuilt by
    /// the next [`scrub`], so that registering (while a token request waits) stays cheap.
    stale: bool,
}

static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(|| {
    RwLock::new(Registry {
        lasting: Vec::new(),
        issued: VecDeque::new(),
        matcher: None,
        stale: false,
    })
});

/// Header names, form fields and JSON members whose value is a credential.
static FIELD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?i)\b((?:proxy-)?authorization|set-cookie|cookie|dpop|client_secret|client_assertion|access_token|refresh_token|id_token|password)(\\?["']?\s*[:=]\s*\\?["']?)[^"'\r\n\\&<>]+"#,
    )
    .expect("the field pattern is a valid regex")
});

/// A credential after an authentication scheme.
static SCHEME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(bearer|ssws|dpop|basic)(\s+)[A-Za-z0-9._~+/=-]{16,}")
        .expect("the scheme pattern is a valid regex")
});

/// A JWT (JWS compact form; a JWE's first three segments), or the base64 form of one.
static JWT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*|ZXlK[A-Za-z0-9+/_-]{40,}={0,2}",
    )
    .expect("the JWT pattern is a valid regex")
});

/// Remembers a configured secret for the process's life (called when a secret is resolved).
pub fn register_secret(value: &str) {
    register(value, true);
}

/// Remembers a token or assertion the process obtained or made (the last 64 are kept; a JWT
/// is not kept, its shape is enough).
pub fn register_issued(value: &str) {
    register(value, false);
}

fn register(value: &str, lasting: bool) {
    let value = value.trim();
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    // A JWT (every assertion the process makes, and most access tokens) is removed by its
    // shape, and its base64 forms with the base64 runs that hold them: registering each one
    // would only rebuild the matcher on every token request.
    if !lasting
        && JWT
            .find(value)
            .is_some_and(|found| found.len() == value.len())
    {
        return;
    }
    let mut registry = REGISTRY
        .write()
        .unwrap_or_else(|poison| poison.into_inner());
    if registry.lasting.iter().any(|(known, _)| known == value)
        || registry.issued.iter().any(|(known, _)| known == value)
    {
        return;
    }
    let entry = (value.to_owned(), forms_of(value));
    if lasting {
        registry.lasting.push(entry);
    } else {
        registry.issued.push_back(entry);
        while registry.issued.len() > ISSUED_KEPT {
            registry.issued.pop_front();
        }
    }
    registry.stale = true;
}

/// The matcher over every registered form, rebuilt first when a value was registered since.
fn matcher() -> Option<Arc<AhoCorasick>> {
    {
        let registry = REGISTRY.read().unwrap_or_else(|poison| poison.into_inner());
        if !registry.stale {
            return registry.matcher.clone();
        }
    }
    let mut registry = REGISTRY
        .write()
        .unwrap_or_else(|poison| poison.into_inner());
    if registry.stale {
        let mut forms: Vec<&str> = registry
            .lasting
            .iter()
            .chain(registry.issued.iter())
            .flat_map(|(_, forms)| forms.iter().map(String::as_str))
            .collect();
        forms.sort_unstable();
        forms.dedup();
        let matcher = AhoCorasickBuilder::new()
            // The quickest kind to build; it is rebuilt whenever a value is registered.
            .kind(Some(AhoCorasickKind::NoncontiguousNFA))
            .match_kind(MatchKind::LeftmostLongest)
            .build(&forms)
            .ok()
            .map(Arc::new);
        registry.matcher = matcher;
        registry.stale = false;
    }
    registry.matcher.clone()
}

/// The forms in which `value` may travel: plain, URL-encoded (both ways), JSON-escaped,
/// base64 (standard and URL-safe, at the three byte alignments), and a PEM's lines.
fn forms_of(value: &str) -> Vec<String> {
    let mut forms = vec![value.to_owned()];
    if value.contains("-----BEGIN ") {
        // A PEM is base64 already: its lines are what can leak (a body quoted in part or
        // re-wrapped), and the whole text JSON-escaped.
        if let Ok(json) = serde_json::to_string(value) {
            forms.push(json.trim_matches('"').to_owned());
        }
        forms.extend(
            value
                .lines()
                .map(str::trim)
                .filter(|line| line.len() >= 16 && !line.starts_with("-----"))
                .map(str::to_owned),
        );
        return forms;
    }
    let form_encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
    forms.push(form_encoded.replace('+', "%20"));
    forms.push(form_encoded);
    if let Ok(json) = serde_json::to_string(value) {
        forms.push(json.trim_matches('"').to_owned());
    }
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        for shift in 0..3 {
            let mut bytes = vec![0_u8; shift];
            bytes.extend_from_slice(value.as_bytes());
            let encoded = engine.encode(&bytes);
            // Characters that mix in the bytes before or after the value depend on them.
            let start = [0, 2, 3][shift];
            let end = if bytes.len() % 3 == 0 {
                encoded.len()
            } else {
                encoded.len() - 1
            };
            if end > start + MIN_SECRET_LEN {
                forms.push(encoded[start..end].to_owned());
            }
        }
    }
    forms.retain(|form| form.len() >= MIN_SECRET_LEN);
    forms
}

/// A long run of base64 (standard or URL-safe): possibly an encoded copy of a request.
static ENCODED_RUN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9+/_-]{40,}={0,2}").expect("the base64 pattern is a valid regex")
});

/// Decodes base64 whatever its alphabet, padding and trailing bits.
fn decode_lenient(run: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let config = GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone);
    let trimmed = run.trim_end_matches('=');
    // A length of 1 modulo 4 cannot be base64: the last character is a stray one.
    let trimmed = if trimmed.len() % 4 == 1 {
        &trimmed[..trimmed.len() - 1]
    } else {
        trimmed
    };
    let alphabet = if trimmed.contains(['-', '_']) {
        base64::alphabet::URL_SAFE
    } else {
        base64::alphabet::STANDARD
    };
    GeneralPurpose::new(&alphabet, config).decode(trimmed).ok()
}

/// `text` without any secret, token, assertion or credential value (see the module docs).
pub fn scrub(text: &str) -> Cow<'_, str> {
    // First whole base64 runs, while they are intact (their alignment is known only then): a
    // run whose decoded text holds anything this step removes goes as a whole.
    let text = match ENCODED_RUN.replace_all(text, |found: &regex::Captures<'_>| {
        let run = &found[0];
        match decode_lenient(run) {
            Some(decoded)
                if matches!(
                    scrub_plain(&String::from_utf8_lossy(&decoded)),
                    Cow::Owned(_)
                ) =>
            {
                MASK.to_owned()
            }
            _ => run.to_owned(),
        }
    }) {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        Cow::Owned(clean) => Cow::Owned(clean),
    };
    match scrub_plain(&text) {
        Cow::Borrowed(_) => text,
        Cow::Owned(clean) => Cow::Owned(clean),
    }
}

/// The steps of [`scrub`] but the decoding of base64 runs.
fn scrub_plain(text: &str) -> Cow<'_, str> {
    let matcher = matcher();
    let mut text = Cow::Borrowed(text);
    if let Some(matcher) = matcher
        && matcher.is_match(text.as_ref())
    {
        text = Cow::Owned(matcher.replace_all(text.as_ref(), &vec![MASK; matcher.patterns_len()]));
    }
    text = replace(text, &FIELD, &format!("${{1}}${{2}}{MASK}"));
    text = replace(text, &SCHEME, &format!("${{1}}${{2}}{MASK}"));
    replace(text, &JWT, MASK)
}

/// Scrubs `text` in place.
pub fn scrub_in_place(text: &mut String) {
    if let Cow::Owned(clean) = scrub(text) {
        *text = clean;
    }
}

fn replace<'a>(text: Cow<'a, str>, pattern: &Regex, with: &str) -> Cow<'a, str> {
    match pattern.replace_all(text.as_ref(), with) {
        Cow::Borrowed(_) => text,
        Cow::Owned(clean) => Cow::Owned(clean),
    }
}

/// Reads an answer's body. The body of an error answer (any status but 2xx) is scrubbed as
/// it is read: it may quote the request back (an IdP's error page, a proxy, a gateway), and
/// every message, log line, report and run record made from it must be clean. A success's
/// body is data, returned as sent.
///
/// # Errors
/// The transport error when the body cannot be read.
pub async fn read_body(response: reqwest::Response) -> Result<bytes::Bytes, reqwest::Error> {
    let success = response.status().is_success();
    let body = response.bytes().await?;
    if success {
        return Ok(body);
    }
    Ok(scrub_body(&body))
}

/// An error answer's body, scrubbed (see [`read_body`]).
pub fn scrub_body(body: &[u8]) -> bytes::Bytes {
    let text = String::from_utf8_lossy(body);
    match scrub(&text) {
        Cow::Borrowed(_) => bytes::Bytes::copy_from_slice(body),
        Cow::Owned(clean) => bytes::Bytes::from(clean),
    }
}

/// A writer that scrubs what is written through it, one `write` at a time: the log
/// subscriber writes each event with one call, so a secret is never split between two.
#[derive(Debug)]
pub struct Redacting<W>(pub W);

impl<W: io::Write> io::Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        match scrub(&text) {
            Cow::Borrowed(_) => self.0.write_all(buf)?,
            Cow::Owned(clean) => self.0.write_all(clean.as_bytes())?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests;
