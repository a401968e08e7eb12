//! What every HTTP edge shares: one request [`limiter::Limiter`] per remote system and the
//! retry policy ([`retry`]) with `Retry-After` and jittered exponential backoff, and the one
//! redaction step ([`redact`]) that every answer, log line and stored message passes.

pub mod limiter;
pub mod redact;
pub mod retry;
pub mod text;

use std::time::Duration;

/// The HTTP client settings every edge shares: TLS always verified (rustls with the platform's
/// roots), the request timeout, a connect timeout of at most 10 s, and our user agent.
pub fn http_client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("socialtalent-sync/", env!("CARGO_PKG_VERSION")))
}
