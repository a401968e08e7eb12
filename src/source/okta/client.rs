//! The HTTP client for the Okta Management API: authenticated GETs that follow `link: <…>;
//! rel="next"` pages, single documents, and JSON POSTs, under Okta's rate limits.
//!
//! Every request goes through [`retry::retry`]: 5xx and transport errors back off with jitter,
//! a 429 waits until `X-Rate-Limit-Reset`. Okta's `X-Rate-Limit-*` headers are read on every
//! answer; when a bucket is nearly used up, the next request to it waits for the reset. A 401
//! drops the cached token and is sent once more; a DPoP nonce challenge is answered once. Every
//! error names the URL (path and query, which never hold a secret) and the reason.
//!
//! # Rate limits
//!
//! Okta counts requests per endpoint bucket and reports, on every answer, the bucket's
//! `X-Rate-Limit-Limit`, `-Remaining` and `-Reset` (epoch seconds). The client keeps one gate per
//! bucket, shared by all clones: when `Remaining <= max(1, Limit / 50)` (two percent of the
//! bucket, at least one request, which leaves headroom for other integrations on the same org
//! and for requests already in flight), requests to that bucket wait until the reset. A bucket is
//! approximated by the path with the object id replaced (`/api/v1/users/*/groups`). A 429 (also
//! Okta's concurrent-limit form, with Limit and Remaining 0) closes the gate until the reset too
//! and is retried then; without a usable reset it backs off like a 5xx. Waits are measured
//! against the server's `Date` when it sends one (clock skew), get up to 250 ms of jitter, are
//! logged at warn level; one wait lasts at most 15 minutes: a 429 whose reset is further away
//! fails the run, naming the reset time. Waiting is sleeping: nothing spins.

use crate::net::text::{describe_transport, excerpt, kind_of, lock, with_colon};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use rand::Rng;
use reqwest::header::{ACCEPT, CONTENT_TYPE, DATE, HeaderMap, LINK, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::time::Instant;
use url::Url;

use super::auth::{OktaAuth, OktaAuthError};
use crate::net::retry::{self, Attempt, Backoff, Verdict};

/// The longest single wait for a rate-limit reset.
pub const MAX_RATE_LIMIT_WAIT: Duration = retry::MAX_RATE_LIMIT_WAIT;
/// The most random delay added to a rate-limit wait, so that clients do not start together.
const RATE_LIMIT_JITTER: Duration = Duration::from_millis(250);
/// How many times one request answers a DPoP nonce challenge from the resource server.
const MAX_NONCE_RESENDS: u32 = 2;

/// What went wrong with an Okta request, named by what the caller does next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OktaError {
    /// 401 twice (the second time with a fresh token): the credential is wrong, expired or
    /// revoked; nothing will work until it is fixed.
    #[error(
        "Okta did not accept {credential} for {url} ({status}{}); check that it is current, \
         not revoked, and belongs to this org",
        with_colon(.detail)
    )]
    Unauthorized {
        /// `source.okta.token` or `the service app <client_id>`.
        credential: String,
        /// The URL (path and query).
        url: String,
        /// The HTTP status.
        status: u16,
        /// Okta's explanation.
        detail: String,
    },
    /// 403: the credential lacks a scope or an admin role for this endpoint.
    #[error("Okta refused {url} to {credential} (403{}); {hint}", with_colon(.detail))]
    Forbidden {
        /// `source.okta.token` or `the service app <client_id>`.
        credential: String,
        /// The URL (path and query).
        url: String,
        /// Okta's explanation.
        detail: String,
        /// What to grant (the scope this endpoint needs, or the admin role).
        hint: String,
    },
    /// 404: the object does not exist (for example a hard-deleted user).
    #[error("not found in Okta: {url}{}", with_colon(.detail))]
    NotFound {
        /// The URL (path and query).
        url: String,
        /// Okta's explanation.
        detail: String,
    },
    /// 429 that outlasted the retries.
    #[error(
        "Okta kept rate-limiting {url} (429) after {attempts} attempts; lower the load on this \
         endpoint or raise the app's share of the rate limit"
    )]
    RateLimited {
        /// The URL (path and query).
        url: String,
        /// Requests sent.
        attempts: u32,
    },
    /// 5xx that outlasted the retries (or a permanent 501/505).
    #[error("Okta is unavailable for {url} ({status}) after {attempts} attempts{}", with_colon(.detail))]
    Unavailable {
        /// The URL (path and query).
        url: String,
        /// The last HTTP status.
        status: u16,
        /// Requests sent.
        attempts: u32,
        /// The last explanation.
        detail: String,
    },
    /// Connection, TLS or timeout errors that outlasted the retries.
    #[error("cannot reach Okta for {url}: {message}")]
    Transport {
        /// The URL (path and query).
        url: String,
        /// What failed.
        message: String,
    },
    /// An answer that cannot be read: a page that is not a JSON array, truncated JSON, a bad or
    /// foreign `link` header.
    #[error("Okta sent an answer for {url} that cannot be read: {message}")]
    InvalidResponse {
        /// The URL (path and query).
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// Another 4xx: Okta refused the request; retrying will not help.
    #[error(
        "Okta rejected {url} ({status}{}{})",
        error_code.as_deref().map(|code| format!(" {code}")).unwrap_or_default(),
        with_colon(.summary)
    )]
    Rejected {
        /// The URL (path and query).
        url: String,
        /// The HTTP status.
        status: u16,
        /// Okta's `errorCode` (`E0000001`), if any.
        error_code: Option<String>,
        /// Okta's `errorSummary` and `errorCauses`, or the body's start.
        summary: String,
    },
    /// A path that cannot be turned into a URL of the org (a bug in the caller).
    #[error("cannot request {path} from Okta: {message}")]
    InvalidUrl {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// Authentication failed: the token endpoint refused, or a credential cannot be used.
    #[error("cannot authenticate to Okta: {0}")]
    Auth(Box<OktaAuthError>),
}

impl From<OktaAuthError> for OktaError {
    fn from(error: OktaAuthError) -> OktaError {
        OktaError::Auth(Box::new(error))
    }
}

/// The Okta client. Cheap to clone; clones share the connection pool, the token, the
/// rate-limit gates and the counters.
#[derive(Debug, Clone)]
pub struct OktaClient {
    inner: Arc<Inner>,
}

/// What the clones share.
#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    /// The org's base URL; pages must stay on its origin.
    org_url: Url,
    auth: OktaAuth,
    backoff: Backoff,
    gates: RateGates,
    /// The `Date` of the first answer that carried one.
    first_server_date: OnceLock<DateTime<Utc>>,
    /// Requests sent, by path. A std mutex: held only to bump a counter.
    requests: Mutex<BTreeMap<String, u64>>,
}

/// When each rate-limit bucket opens again. A std mutex: held only to read or write an entry.
#[derive(Debug, Default)]
struct RateGates {
    closed_until: Mutex<HashMap<String, Instant>>,
}

/// The `X-Rate-Limit-*` headers of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RateLimit {
    /// `X-Rate-Limit-Limit`: the bucket's size.
    limit: Option<u64>,
    /// `X-Rate-Limit-Remaining`: requests left in the window.
    remaining: Option<u64>,
    /// `X-Rate-Limit-Reset`: when the window resets, in epoch seconds.
    reset: Option<u64>,
}

/// A 2xx answer: its headers and body.
struct Answer {
    headers: HeaderMap,
    body: Vec<u8>,
}

/// Per-call state that outlives one attempt.
#[derive(Default)]
struct CallState {
    /// Requests sent for this call.
    sent: AtomicU32,
    /// Whether a 401 already made us drop the token and send again.
    reauthenticated: AtomicBool,
    /// DPoP nonce challenges answered.
    nonce_resends: AtomicU32,
}

impl OktaClient {
    /// Builds a client for the org at `org_url` with a request `timeout` and at most
    /// `max_retries` retries per request (429, 5xx and transport errors).
    ///
    /// # Errors
    /// [`OktaError::Transport`] when the HTTP client (TLS stack) cannot be initialised.
    pub fn new(
        org_url: Url,
        auth: OktaAuth,
        timeout: Duration,
        max_retries: u32,
    ) -> Result<OktaClient, OktaError> {
        let backoff = Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
            max_retries,
        );
        Self::with_backoff(org_url, auth, timeout, backoff)
    }

    /// Like [`OktaClient::new`] with a given retry policy (tests use short delays). Waits that
    /// Okta asks for (rate-limit resets, `Retry-After`) are capped at [`MAX_RATE_LIMIT_WAIT`].
    ///
    /// # Errors
    /// [`OktaError::Transport`] when the HTTP client (TLS stack) cannot be initialised.
    pub fn with_backoff(
        org_url: Url,
        auth: OktaAuth,
        timeout: Duration,
        backoff: Backoff,
    ) -> Result<OktaClient, OktaError> {
        let http = crate::net::http_client_builder(timeout)
            .build()
            .map_err(|error| OktaError::Transport {
                url: display_url(&org_url),
                message: describe_transport(&error),
            })?;
        Ok(OktaClient {
            inner: Arc::new(Inner {
                http,
                org_url,
                auth,
                backoff: backoff.with_max_hint(MAX_RATE_LIMIT_WAIT + RATE_LIMIT_JITTER),
                gates: RateGates::default(),
                first_server_date: OnceLock::new(),
                requests: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// GETs `path_and_query` (relative to the org URL, e.g. `/api/v1/users?limit=200`) and
    /// follows the `link: <…>; rel="next"` headers, calling `on_page` with each page's items.
    ///
    /// Next links are followed exactly as given (the `after` cursor is opaque), whether they come
    /// as repeated `link` headers or one comma-joined header. Stops when a page has no next link,
    /// when `stop_when_short` is `Some(n)` and a page has fewer than `n` items (System Log
    /// polling always has a next link), or when `on_page` returns `Ok(false)`.
    ///
    /// # Errors
    /// Any [`OktaError`] of a page, or of `on_page`; [`OktaError::InvalidResponse`] when a page
    /// is not a JSON array, or a next link is unreadable, leaves the org's origin, or points
    /// back to the same page.
    pub async fn get_pages(
        &self,
        path_and_query: &str,
        stop_when_short: Option<usize>,
        on_page: impl FnMut(Vec<Value>) -> Result<bool, OktaError>,
    ) -> Result<(), OktaError> {
        self.get_pages_of(path_and_query, stop_when_short, on_page)
            .await
    }

    /// Like [`OktaClient::get_pages`], with each item deserialized straight into `T` (a large
    /// read then builds only the fields it keeps, not a `Value` per item). `T` should accept
    /// any JSON value, so that one odd item is the caller's to reject rather than a failed page.
    ///
    /// # Errors
    /// As [`OktaClient::get_pages`]; an item that `T` refuses fails the page as unreadable.
    pub async fn get_pages_of<T: DeserializeOwned>(
        &self,
        path_and_query: &str,
        stop_when_short: Option<usize>,
        mut on_page: impl FnMut(Vec<T>) -> Result<bool, OktaError>,
    ) -> Result<(), OktaError> {
        let mut url = self.url_for(path_and_query)?;
        let mut prefetched: Option<tokio::task::JoinHandle<Result<Answer, OktaError>>> = None;
        loop {
            let answer = match prefetched.take() {
                Some(handle) => handle.await.map_err(|error| OktaError::InvalidResponse {
                    url: display_url(&url),
                    message: format!("the page request failed: {error}"),
                })??,
                None => self.send(Method::GET, &url, None).await?,
            };
            // Cursor paging is sequential, but the next page can be on its way while this one is
            // parsed and handed over (not when a short page may end the read: System Log polls).
            let next_now = self.next_link(&answer.headers, &url)?;
            if stop_when_short.is_none()
                && let Some(next) = next_now.clone().filter(|next| *next != url)
            {
                let client = self.clone();
                prefetched = Some(tokio::spawn(async move {
                    client.send(Method::GET, &next, None).await
                }));
            }
            let items = parse_items::<T>(&answer.body, &url)?;
            drop(answer);
            let next = next_now;
            let n_items = items.len();
            if !on_page(items)? {
                if let Some(handle) = prefetched.take() {
                    handle.abort();
                }
                return Ok(());
            }
            if stop_when_short.is_some_and(|page_size| n_items < page_size) {
                return Ok(());
            }
            match next {
                None => return Ok(()),
                Some(next) if next == url => {
                    return Err(OktaError::InvalidResponse {
                        url: display_url(&url),
                        message: "the next link points back to the same page".to_owned(),
                    });
                }
                Some(next) => url = next,
            }
        }
    }

    /// GETs one JSON document (e.g. `/api/v1/users/{id}`); `Ok(None)` on 404.
    ///
    /// # Errors
    /// Any [`OktaError`] but [`OktaError::NotFound`].
    pub async fn get_json(&self, path_and_query: &str) -> Result<Option<Value>, OktaError> {
        let url = self.url_for(path_and_query)?;
        match self.send(Method::GET, &url, None).await {
            Ok(answer) => parse_json(&answer.body, &url).map(Some),
            Err(OktaError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// POSTs `body` as JSON to `path` (e.g. `/api/v1/users/{id}` with `{"profile":{…}}`) and
    /// returns the answer's JSON (`null` for an empty answer).
    ///
    /// # Errors
    /// Any [`OktaError`]; [`OktaError::NotFound`] when the object is gone.
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value, OktaError> {
        let url = self.url_for(path)?;
        let answer = self.send(Method::POST, &url, Some(body)).await?;
        if answer.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        parse_json(&answer.body, &url)
    }

    /// The server's `Date` of the first answer this client (or a clone) saw, if any; a
    /// watermark taken from the server's clock is immune to local clock skew.
    #[must_use]
    pub fn first_server_date(&self) -> Option<DateTime<Utc>> {
        self.inner.first_server_date.get().copied()
    }

    /// Requests sent to the API, by path without query (e.g. `/api/v1/users` → 3); retries and
    /// re-sends after a 401 count, token requests do not.
    #[must_use]
    pub fn requests(&self) -> BTreeMap<String, u64> {
        lock(&self.inner.requests).clone()
    }

    /// The org URL that `path_and_query` names.
    fn url_for(&self, path_and_query: &str) -> Result<Url, OktaError> {
        let invalid = |message: String| OktaError::InvalidUrl {
            path: path_and_query.to_owned(),
            message,
        };
        if !path_and_query.starts_with('/') || path_and_query.starts_with("//") {
            return Err(invalid("the path must start with a single /".to_owned()));
        }
        let url = self
            .inner
            .org_url
            .join(path_and_query)
            .map_err(|error| invalid(error.to_string()))?;
        Ok(url)
    }

    /// The `rel="next"` link of an answer, resolved against `url` and checked to stay on the
    /// org's origin.
    fn next_link(&self, headers: &HeaderMap, url: &Url) -> Result<Option<Url>, OktaError> {
        let invalid = |message: String| OktaError::InvalidResponse {
            url: display_url(url),
            message,
        };
        let mut next = None;
        for value in headers.get_all(LINK) {
            let value = value
                .to_str()
                .map_err(|_| invalid("a link header is not ASCII".to_owned()))?;
            let links = parse_link_header(value)
                .map_err(|message| invalid(format!("bad link header: {message}")))?;
            for link in links {
                if link.rels.iter().any(|rel| rel.eq_ignore_ascii_case("next")) {
                    if next.is_some() {
                        return Err(invalid("more than one next link".to_owned()));
                    }
                    next = Some(link.target);
                }
            }
        }
        let Some(target) = next else {
            return Ok(None);
        };
        let next_url = url
            .join(&target)
            .map_err(|error| invalid(format!("bad next link: {error}")))?;
        if next_url.origin() != self.inner.org_url.origin() {
            return Err(invalid(format!(
                "the next link leaves the org ({}), refusing to follow it",
                next_url.origin().ascii_serialization()
            )));
        }
        Ok(Some(next_url))
    }

    /// Sends one request with retries; returns a 2xx answer.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
    ) -> Result<Answer, OktaError> {
        let encoded = body.map(Value::to_string);
        let call = CallState::default();
        let shown = display_url(url);
        retry::retry(
            &self.inner.backoff,
            || self.attempt(&method, url, encoded.as_deref(), &call),
            |retry_no, delay, error: &OktaError| {
                retry::log_retry("Okta", &method, &shown, retry_no, delay, error);
            },
        )
        .await
    }

    /// One attempt: waits for the bucket's gate, authenticates and sends; sends again at once
    /// after a first 401 (with a fresh token) and after a DPoP nonce challenge.
    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&str>,
        call: &CallState,
    ) -> Result<Answer, Attempt<OktaError>> {
        let inner = &*self.inner;
        let shown = display_url(url);
        let bucket = bucket_of(url.path());
        loop {
            inner.gates.wait(&bucket, &shown).await;
            let auth_headers =
                inner
                    .auth
                    .headers(&inner.http, method, url)
                    .await
                    .map_err(|error| {
                        if error.is_transient() {
                            let after = error.retry_after().map(|wait| wait + jitter());
                            Attempt::Retry {
                                error: OktaError::from(error),
                                after,
                            }
                        } else {
                            Attempt::Fatal(OktaError::from(error))
                        }
                    })?;
            let mut request = inner
                .http
                .request(method.clone(), url.clone())
                .headers(auth_headers)
                .header(ACCEPT, "application/json");
            if let Some(body) = body {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.to_owned());
            }
            let sent = call.sent.fetch_add(1, Ordering::Relaxed) + 1;
            *lock(&inner.requests)
                .entry(url.path().to_owned())
                .or_default() += 1;
            let transport = |error: reqwest::Error| Attempt::Retry {
                error: OktaError::Transport {
                    url: shown.clone(),
                    message: describe_transport(&error),
                },
                after: None,
            };
            let response = request.send().await.map_err(transport)?;
            let status = response.status();
            let headers = response.headers().clone();
            let now = SystemTime::now();
            if let Some(date) = server_date(&headers) {
                let _ = inner.first_server_date.set(DateTime::<Utc>::from(date));
            }
            let rate = RateLimit::from_headers(&headers);
            let reset_wait = rate.until_reset(&headers, now);
            if status != StatusCode::TOO_MANY_REQUESTS
                && rate.is_low()
                && let Some(wait) = reset_wait
            {
                inner
                    .gates
                    .close(&bucket, wait.min(MAX_RATE_LIMIT_WAIT) + jitter());
            }
            // An error answer comes back scrubbed: it may quote the request back.
            let body: Vec<u8> = crate::net::redact::read_body(response)
                .await
                .map_err(transport)?
                .into();
            if status.is_success() {
                return Ok(Answer { headers, body });
            }

            let detail = error_detail(&body, status);
            match status {
                StatusCode::UNAUTHORIZED => {
                    if let Some(nonce) = dpop_nonce_challenge(&headers)
                        && call.nonce_resends.fetch_add(1, Ordering::Relaxed) < MAX_NONCE_RESENDS
                    {
                        inner.auth.set_resource_nonce(nonce);
                        continue;
                    }
                    if !call.reauthenticated.swap(true, Ordering::Relaxed) {
                        tracing::debug!(
                            message = "Okta answered 401; sending again with a fresh token.",
                            url = %shown
                        );
                        inner.auth.invalidate();
                        continue;
                    }
                    return Err(Attempt::Fatal(OktaError::Unauthorized {
                        credential: inner.auth.credential(),
                        url: shown,
                        status: status.as_u16(),
                        detail: detail.summary(),
                    }));
                }
                StatusCode::FORBIDDEN => {
                    return Err(Attempt::Fatal(OktaError::Forbidden {
                        credential: inner.auth.credential(),
                        hint: forbidden_hint(&inner.auth, method, url.path()),
                        url: shown,
                        detail: detail.summary(),
                    }));
                }
                StatusCode::NOT_FOUND => {
                    return Err(Attempt::Fatal(OktaError::NotFound {
                        url: shown,
                        detail: detail.summary(),
                    }));
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    // Without a reset in the future, back off (after = None). A reset further
                    // away than one wait may last fails the run below, before the gate closes.
                    let after = reset_wait.map(|wait| {
                        let wait = wait + jitter();
                        if wait <= MAX_RATE_LIMIT_WAIT {
                            inner.gates.close(&bucket, wait);
                        }
                        wait
                    });
                    tracing::warn!(
                        message = "Okta rate limit exceeded (429).",
                        url = %shown,
                        error_code = detail.code.as_deref().unwrap_or(""),
                        limit = rate.limit,
                        wait_ms = after.map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
                    );
                    // A wait longer than one may last fails the run at once, naming its end.
                    if let Some(why) = after.and_then(|wait| retry::wait_too_long(wait, now)) {
                        return Err(Attempt::Fatal(OktaError::Unavailable {
                            url: shown,
                            status: status.as_u16(),
                            attempts: sent,
                            detail: why,
                        }));
                    }
                    return Err(Attempt::Retry {
                        error: OktaError::RateLimited {
                            url: shown,
                            attempts: sent,
                        },
                        after,
                    });
                }
                _ => {}
            }
            let verdict = retry::classify_status(status, &headers, now);
            if status.is_server_error() {
                let error = OktaError::Unavailable {
                    url: shown,
                    status: status.as_u16(),
                    attempts: sent,
                    detail: detail.summary(),
                };
                return Err(match verdict {
                    Verdict::RetryAfter(after) => Attempt::Retry { error, after },
                    Verdict::Done | Verdict::Fail => Attempt::Fatal(error),
                });
            }
            return Err(Attempt::Fatal(OktaError::Rejected {
                url: shown,
                status: status.as_u16(),
                error_code: detail.code,
                summary: detail.summary,
            }));
        }
    }
}

impl RateGates {
    /// Waits until `bucket` is open. Sleeps to the reset (again if it moved meanwhile); never
    /// polls.
    async fn wait(&self, bucket: &str, shown: &str) {
        loop {
            let until = lock(&self.closed_until).get(bucket).copied();
            let Some(until) = until else { return };
            let now = Instant::now();
            if until <= now {
                let mut gates = lock(&self.closed_until);
                if gates.get(bucket).is_some_and(|until| *until <= now) {
                    gates.remove(bucket);
                }
                return;
            }
            let wait = until - now;
            tracing::warn!(
                message = "Okta rate limit nearly used up; waiting for the reset.",
                url = %shown,
                bucket,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)
            );
            // A deliberate rate-limit wait: progress for the watchdog.
            crate::progress::sleep_until(until).await;
        }
    }

    /// Closes `bucket` for `wait` (at most [`MAX_RATE_LIMIT_WAIT`] plus jitter); a later
    /// closing time wins.
    fn close(&self, bucket: &str, wait: Duration) {
        let until = Instant::now() + wait;
        let mut gates = lock(&self.closed_until);
        let entry = gates.entry(bucket.to_owned()).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }
}

impl RateLimit {
    /// Reads the `X-Rate-Limit-*` headers; missing or unreadable ones are `None`.
    pub(crate) fn from_headers(headers: &HeaderMap) -> RateLimit {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok())
        };
        RateLimit {
            limit: number("x-rate-limit-limit"),
            remaining: number("x-rate-limit-remaining"),
            reset: number("x-rate-limit-reset"),
        }
    }

    /// Whether the bucket is nearly used up: `Remaining <= max(1, Limit / 50)`.
    fn is_low(&self) -> bool {
        match self.remaining {
            Some(remaining) => remaining <= (self.limit.unwrap_or(0) / 50).max(1),
            None => false,
        }
    }

    /// How long until the reset, measured against the answer's `Date` when it has one, else
    /// against `local_now`; `None` without a reset or when it is not in the future. Not capped:
    /// a 429 whose reset is further than [`MAX_RATE_LIMIT_WAIT`] fails the run; a gate closed
    /// on a nearly empty bucket waits at most that long.
    pub(crate) fn until_reset(
        &self,
        headers: &HeaderMap,
        local_now: SystemTime,
    ) -> Option<Duration> {
        let reset = UNIX_EPOCH.checked_add(Duration::from_secs(self.reset?))?;
        let now = server_date(headers).unwrap_or(local_now);
        let wait = reset
            .duration_since(now)
            .ok()
            .filter(|wait| !wait.is_zero())?;
        Some(wait)
    }
}

/// One link of a `link` header: its target and its `rel` values.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    target: String,
    rels: Vec<String>,
}

/// Parses one `link` header value (RFC 8288): comma-separated `<target>; param=value` entries.
/// Commas inside `<…>` and quoted strings belong to the entry (Okta's `fields` parameter holds
/// commas).
fn parse_link_header(value: &str) -> Result<Vec<Link>, String> {
    let mut links = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Ok(links);
        }
        let after_open = rest
            .strip_prefix('<')
            .ok_or_else(|| "a link must start with <".to_owned())?;
        let close = after_open
            .find('>')
            .ok_or_else(|| "a link's < has no matching >".to_owned())?;
        let target = after_open[..close].trim().to_owned();
        rest = &after_open[close + 1..];
        let mut rels = Vec::new();
        loop {
            rest = rest.trim_start_matches([' ', '\t']);
            let Some(after_semicolon) = rest.strip_prefix(';') else {
                break;
            };
            let (name, value, remainder) = parse_link_param(after_semicolon)?;
            rest = remainder;
            if name.eq_ignore_ascii_case("rel") {
                rels.extend(value.split_ascii_whitespace().map(str::to_owned));
            }
        }
        if !(rest.is_empty() || rest.starts_with(',')) {
            return Err(format!("unexpected text after a link: {:?}", excerpt(rest)));
        }
        links.push(Link { target, rels });
    }
}

/// Parses `name[=value]` of a link parameter (after its `;`); returns the name, the value
/// (unquoted) and what follows.
fn parse_link_param(text: &str) -> Result<(&str, String, &str), String> {
    let text = text.trim_start_matches([' ', '\t']);
    let name_end = text.find(['=', ';', ',']).unwrap_or(text.len());
    let name = text[..name_end].trim();
    if name.is_empty() {
        return Err("a link parameter has no name".to_owned());
    }
    let Some(after_equals) = text[name_end..].strip_prefix('=') else {
        return Ok((name, String::new(), &text[name_end..]));
    };
    let after_equals = after_equals.trim_start_matches([' ', '\t']);
    if let Some(quoted) = after_equals.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        while let Some((index, c)) = chars.next() {
            match c {
                '"' => return Ok((name, value, &quoted[index + 1..])),
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                _ => value.push(c),
            }
        }
        Err(format!("the {name} parameter's quote is not closed"))
    } else {
        let end = after_equals.find([';', ',']).unwrap_or(after_equals.len());
        Ok((
            name,
            after_equals[..end].trim().to_owned(),
            &after_equals[end..],
        ))
    }
}

/// Okta's error body: `errorCode`, and `errorSummary` with the `errorCauses`.
struct ErrorDetail {
    code: Option<String>,
    summary: String,
}

impl ErrorDetail {
    /// `E0000011: Invalid token provided`, for the error variants that keep one string.
    fn summary(&self) -> String {
        match &self.code {
            Some(code) if self.summary.is_empty() => code.clone(),
            Some(code) => format!("{code}: {}", self.summary),
            None => self.summary.clone(),
        }
    }
}

/// Reads Okta's error body, or describes a body that is not one.
fn error_detail(body: &[u8], status: StatusCode) -> ErrorDetail {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let code = value
            .get("errorCode")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let mut summary = value
            .get("errorSummary")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let causes: Vec<&str> = value
            .get("errorCauses")
            .and_then(Value::as_array)
            .map(|causes| {
                causes
                    .iter()
                    .filter_map(|cause| cause.get("errorSummary").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        if !causes.is_empty() {
            summary = format!("{summary} ({})", causes.join("; "));
        }
        if code.is_some() || !summary.is_empty() {
            return ErrorDetail { code, summary };
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let summary = if text.is_empty() {
        status.canonical_reason().unwrap_or_default().to_owned()
    } else {
        format!(
            "no Okta error in the body, which starts {:?}",
            excerpt(text)
        )
    };
    ErrorDetail {
        code: None,
        summary,
    }
}

/// The hint of a 403: the scope the endpoint needs, and the admin role.
fn forbidden_hint(auth: &OktaAuth, method: &Method, path: &str) -> String {
    let scope = needed_scope(method, path);
    match (auth, scope) {
        (OktaAuth::ServiceApp(_), Some(scope)) => format!(
            "grant the scope {scope} to the service app (Okta API Scopes tab), list it in \
             source.okta.scopes, and give the app an admin role that allows it"
        ),
        (OktaAuth::ServiceApp(_), None) => {
            "check the service app's granted scopes and admin role".to_owned()
        }
        (OktaAuth::ApiToken(_), scope) => format!(
            "an API token acts with the admin role of the user who created it; that role must \
             allow this{}",
            scope
                .map(|scope| format!(" (for a service app: scope {scope})"))
                .unwrap_or_default()
        ),
    }
}

/// The Okta scope that `method path` needs, when known.
fn needed_scope(method: &Method, path: &str) -> Option<&'static str> {
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    if under("/api/v1/logs") {
        Some("okta.logs.read")
    } else if under("/api/v1/groups") {
        Some("okta.groups.read")
    } else if under("/api/v1/users") {
        if *method == Method::GET {
            Some("okta.users.read")
        } else {
            Some("okta.users.manage")
        }
    } else {
        None
    }
}

/// The `dpop-nonce` of a 401 that asks for one (`WWW-Authenticate: DPoP error="use_dpop_nonce"`).
fn dpop_nonce_challenge(headers: &HeaderMap) -> Option<String> {
    let challenged = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(|value| value.contains("use_dpop_nonce"));
    if !challenged {
        return None;
    }
    headers
        .get("dpop-nonce")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// The answer's `Date`, if it has a valid one.
fn server_date(headers: &HeaderMap) -> Option<SystemTime> {
    headers
        .get(DATE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| httpdate::parse_http_date(value).ok())
}

/// The rate-limit bucket of a path: the path with the object id of `/api/v1/<collection>/<id>`
/// replaced by `*`.
fn bucket_of(path: &str) -> String {
    let mut segments: Vec<&str> = path.split('/').collect();
    // ["", "api", "v1", "users", "<id>", …]
    if segments.get(1) == Some(&"api") && segments.len() > 4 {
        segments[4] = "*";
    }
    segments.join("/")
}

/// Parses a page: a JSON array of items, each deserialized into `T`; names the URL on failure.
fn parse_items<T: DeserializeOwned>(body: &[u8], url: &Url) -> Result<Vec<T>, OktaError> {
    let is_array = body
        .iter()
        .find(|byte| !byte.is_ascii_whitespace())
        .is_some_and(|byte| *byte == b'[');
    if !is_array {
        // Not an array: parse it whole to say what it is (or why it is not JSON).
        let other = parse_json(body, url)?;
        return Err(OktaError::InvalidResponse {
            url: display_url(url),
            message: format!("expected a JSON array of items, got {}", kind_of(&other)),
        });
    }
    serde_json::from_slice(body).map_err(|error| invalid_json(&error, url))
}

/// Parses a JSON body, naming the URL on failure.
fn parse_json(body: &[u8], url: &Url) -> Result<Value, OktaError> {
    serde_json::from_slice(body).map_err(|error| invalid_json(&error, url))
}

/// The error of a body that is not (the expected) JSON.
fn invalid_json(error: &serde_json::Error, url: &Url) -> OktaError {
    OktaError::InvalidResponse {
        url: display_url(url),
        message: if error.is_eof() {
            format!("the JSON is cut off ({error})")
        } else {
            format!("not valid JSON ({error})")
        },
    }
}

/// A URL for messages: its path and query (Okta URLs never carry secrets there).
pub(crate) fn display_url(url: &Url) -> String {
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    }
}

/// A random delay of up to [`RATE_LIMIT_JITTER`].
fn jitter() -> Duration {
    let max = u64::try_from(RATE_LIMIT_JITTER.as_millis()).unwrap_or(0);
    Duration::from_millis(rand::rng().random_range(0..=max))
}

#[cfg(test)]
mod tests;
