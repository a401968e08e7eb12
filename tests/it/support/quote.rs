//! Quoting a request back, as a misconfigured gateway, a proxy or an IdP error page does (the
//! fakes' echo modes; the benchmarks that include a fake include this file beside it).

use base64::Engine as _;

/// A request quoted back as a misconfigured gateway, a proxy or an IdP error page does: the
/// request line, every header (credentials included) and the body, as text, followed by a
/// `trace:` line holding all of it base64-encoded (as gateways that log requests do).
pub fn quote_request(
    method: &str,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> String {
    let mut quoted = format!("{method} {uri} HTTP/1.1\n");
    for (name, value) in headers {
        quoted.push_str(&format!(
            "{name}: {}\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    quoted.push('\n');
    quoted.push_str(&String::from_utf8_lossy(body));
    let trace = base64::engine::general_purpose::STANDARD.encode(quoted.as_bytes());
    quoted.push_str("\ntrace: ");
    quoted.push_str(&trace);
    quoted
}
