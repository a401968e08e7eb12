//! The HTTP client for OneLogin's API: an OAuth 2.0 access token from
//! `POST /auth/oauth2/v2/token` (client credentials, the id and secret as HTTP Basic), cached
//! until shortly before it expires; authenticated GETs that follow v2's `After-Cursor` header
//! (sent back as `cursor=` with every other query parameter, as the docs ask) or v1's
//! `pagination.after_cursor` envelope; and JSON PUTs.
//!
//! Every request goes through [`retry::retry`]: 5xx and transport errors back off with jitter.
//! A 401 drops the cached token and is sent once more with a fresh one.
//!
//! # Rate limits
//!
//! OneLogin counts requests per account and per hour and reports, on every answer,
//! `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset` (seconds until the
//! window resets). When `Remaining <= max(1, Limit / 50)` (two percent of the budget, leaving
//! room for other integrations on the account), the next request waits for the reset. A 429
//! waits for `Retry-After`, else for the reset, else backs off. One wait is at most
//! [`MAX_RATE_LIMIT_WAIT`] (15 minutes); a longer one fails the run with the time of the reset,
//! so that the next scheduled run tries again. Waiting is sleeping: nothing spins.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, DATE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::time::Instant;
use url::Url;

use crate::config::Secret;
use crate::net::retry::{self, Attempt, Backoff, Verdict};
use crate::net::text::{describe_transport, excerpt, kind_of, lock, with_colon};

/// The longest single wait for a rate-limit reset (SPEC: one wait is at most 15 minutes).
pub const MAX_RATE_LIMIT_WAIT: Duration = crate::net::retry::MAX_RATE_LIMIT_WAIT;
/// How long before its expiry a token is replaced (at most a tenth of its lifetime).
const TOKEN_MARGIN: Duration = Duration::from_secs(300);
/// Token requests per call before a persistent 5xx is reported as a credential problem.
const TOKEN_ATTEMPTS: u32 = 3;

/// What went wrong with a OneLogin request, named by what the caller does next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OneLoginError {
    /// The token endpoint refused the credentials, or answered 5xx every time (OneLogin does
    /// that for the credentials of a deleted admin).
    #[error("cannot authenticate to OneLogin as client {client_id}: {message}")]
    Auth {
        /// The API credential's client id.
        client_id: String,
        /// What happened and what to do.
        message: String,
    },
    /// 401 twice (the second time with a fresh token), or 403: the credential is not accepted
    /// for this endpoint.
    #[error("OneLogin refused {url} ({status}{}); {hint}", with_colon(.detail))]
    Refused {
        /// The URL (path and query).
        url: String,
        /// The HTTP status.
        status: u16,
        /// OneLogin's explanation.
        detail: String,
        /// The permission the credential needs.
        hint: String,
    },
    /// 404: the object does not exist.
    #[error("not found in OneLogin: {url}{}", with_colon(.detail))]
    NotFound {
        /// The URL (path and query).
        url: String,
        /// OneLogin's explanation.
        detail: String,
    },
    /// 429 that outlasted the retries.
    #[error("OneLogin kept rate-limiting {url} (429) after {attempts} attempts")]
    RateLimited {
        /// The URL (path and query).
        url: String,
        /// Requests sent.
        attempts: u32,
    },
    /// The rate limit resets later than one wait may last.
    #[error(
        "OneLogin's rate limit for this account is used up until {reset_at} (requesting {url}); \
         that is more than the {} minutes one wait may last, so this run stops and the next \
         one tries again",
        MAX_RATE_LIMIT_WAIT.as_secs() / 60
    )]
    RateLimitTooLong {
        /// The URL (path and query).
        url: String,
        /// When the budget resets (RFC 3339, UTC).
        reset_at: String,
    },
    /// 5xx that outlasted the retries.
    #[error("OneLogin is unavailable for {url} ({status}) after {attempts} attempts{}", with_colon(.detail))]
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
    #[error("cannot reach OneLogin for {url}: {message}")]
    Transport {
        /// The URL (path and query).
        url: String,
        /// What failed.
        message: String,
    },
    /// An answer that cannot be read (a page that is not a JSON array, cut-off JSON).
    #[error("OneLogin sent an answer for {url} that cannot be read: {message}")]
    InvalidResponse {
        /// The URL (path and query).
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// Another 4xx: OneLogin refused the request; retrying will not help.
    #[error("OneLogin rejected {url} ({status}{})", with_colon(.detail))]
    Rejected {
        /// The URL (path and query).
        url: String,
        /// The HTTP status.
        status: u16,
        /// OneLogin's `message` (and `name`), or the body's start.
        detail: String,
    },
    /// A path that cannot be turned into a URL of the account (a bug in the caller).
    #[error("cannot request {path} from OneLogin: {message}")]
    InvalidUrl {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The OneLogin client. Cheap to clone; clones share the connection pool, the token, the
/// rate-limit gate and the counters.
#[derive(Debug, Clone)]
pub struct OneLoginClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    api_url: Url,
    client_id: String,
    client_secret: Secret,
    backoff: Backoff,
    /// The cached access token; an async mutex so that concurrent requests wait for one
    /// token request instead of each making their own.
    token: tokio::sync::Mutex<Option<CachedToken>>,
    /// When the account's budget opens again, and that time as a date (for messages).
    /// A std mutex: held only to read or write it.
    gate: Mutex<Option<(Instant, DateTime<Utc>)>>,
    first_server_date: OnceLock<DateTime<Utc>>,
    /// Requests sent, by path (token requests under the token path).
    requests: Mutex<BTreeMap<String, u64>>,
}

#[derive(Debug)]
struct CachedToken {
    value: Secret,
    /// When to stop using it.
    refresh_at: Instant,
}

/// A 2xx answer: its headers and body.
struct Answer {
    headers: HeaderMap,
    body: Vec<u8>,
}

#[derive(Default)]
struct CallState {
    sent: AtomicU32,
    reauthenticated: AtomicBool,
}

/// A task that is aborted when its handle is dropped (a page fetch nobody waits for).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Which paging a list endpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// API v2: a bare JSON array; the next page's cursor in the `After-Cursor` header, sent
    /// back as `cursor=`.
    V2,
    /// API v1: `{"status":…, "pagination": {"after_cursor": …}, "data": […]}`, sent back as
    /// `after_cursor=`.
    V1,
}

impl OneLoginClient {
    /// A client for the account at `api_url` with the API credential `client_id`/`secret`.
    ///
    /// # Errors
    /// [`OneLoginError::Transport`] when the HTTP client cannot be initialised.
    pub fn new(
        api_url: Url,
        client_id: String,
        client_secret: Secret,
        timeout: Duration,
        backoff: Backoff,
    ) -> Result<OneLoginClient, OneLoginError> {
        // The shared redaction step removes the secret from every text that leaves the process.
        crate::net::redact::register_secret(client_secret.expose());
        let http = crate::net::http_client_builder(timeout)
            .build()
            .map_err(|error| OneLoginError::Transport {
                url: api_url.to_string(),
                message: describe_transport(&error),
            })?;
        Ok(OneLoginClient {
            inner: Arc::new(Inner {
                http,
                api_url,
                client_id,
                client_secret,
                backoff: backoff.with_max_hint(MAX_RATE_LIMIT_WAIT + Duration::from_secs(1)),
                token: tokio::sync::Mutex::new(None),
                gate: Mutex::new(None),
                first_server_date: OnceLock::new(),
                requests: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// The server's `Date` of the first answer this client saw.
    #[must_use]
    pub fn first_server_date(&self) -> Option<DateTime<Utc>> {
        self.inner.first_server_date.get().copied()
    }

    /// Requests sent, by path without query (retries count).
    #[must_use]
    pub fn requests(&self) -> BTreeMap<String, u64> {
        lock(&self.inner.requests).clone()
    }

    /// GETs every page of a list, calling `on_page` with each page's items until it returns
    /// `Ok(false)` or there is no next cursor. A producer task fetches and parses the pages
    /// (the next request is sent as soon as a page's cursor is known) one page ahead of
    /// `on_page`, so that download, parsing and the caller's work overlap.
    ///
    /// # Errors
    /// Any [`OneLoginError`] of a page; a page that is not what `paging` says is unreadable,
    /// and so is a cursor that repeats an earlier one.
    pub async fn get_pages<T: DeserializeOwned + Send + 'static>(
        &self,
        path_and_query: &str,
        paging: Paging,
        mut on_page: impl FnMut(Vec<T>) -> Result<bool, OneLoginError>,
    ) -> Result<(), OneLoginError> {
        let first = self.url_for(path_and_query)?;
        let shown = display_url(&first);
        let (sender, mut receiver) = tokio::sync::mpsc::channel(1);
        let client = self.clone();
        let mut producer = AbortOnDrop(tokio::spawn(async move {
            client.produce_pages::<T>(first, paging, sender).await;
        }));
        while let Some(page) = receiver.recv().await {
            if !on_page(page?)? {
                return Ok(());
            }
        }
        // The channel closed: after the last page, or because the producer stopped without
        // saying why, which must not pass for the end of the list.
        (&mut producer.0)
            .await
            .map_err(|error| OneLoginError::InvalidResponse {
                url: shown,
                message: format!("the page reader stopped: {error}"),
            })
    }

    /// Fetches and parses the pages of a list into `sender`, in order, until the last page,
    /// an error (sent as the last item) or a closed channel.
    async fn produce_pages<T: DeserializeOwned + Send + 'static>(
        self,
        first: Url,
        paging: Paging,
        sender: tokio::sync::mpsc::Sender<Result<Vec<T>, OneLoginError>>,
    ) {
        let mut url = first.clone();
        let mut seen_cursors = std::collections::HashSet::new();
        let mut in_flight: Option<AbortOnDrop<Result<Answer, OneLoginError>>> = None;
        loop {
            let answer = match in_flight.take() {
                Some(mut handle) => match (&mut handle.0).await {
                    Ok(answer) => answer,
                    Err(error) => Err(OneLoginError::InvalidResponse {
                        url: display_url(&url),
                        message: format!("the page request failed: {error}"),
                    }),
                },
                None => self.send(Method::GET, &url, None).await,
            };
            let answer = match answer {
                Ok(answer) => answer,
                Err(error) => {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
            };
            let mut next_url = None;
            let mut follow =
                |cursor: String,
                 in_flight: &mut Option<AbortOnDrop<Result<Answer, OneLoginError>>>|
                 -> Result<(), OneLoginError> {
                    if !seen_cursors.insert(cursor.clone()) {
                        return Err(OneLoginError::InvalidResponse {
                            url: display_url(&url),
                            message: "the next cursor repeats an earlier one".to_owned(),
                        });
                    }
                    let param = match paging {
                        Paging::V2 => "cursor",
                        Paging::V1 => "after_cursor",
                    };
                    let next = with_param(&first, param, &cursor);
                    let client = self.clone();
                    let for_task = next.clone();
                    *in_flight = Some(AbortOnDrop(tokio::spawn(async move {
                        client.send(Method::GET, &for_task, None).await
                    })));
                    next_url = Some(next);
                    Ok(())
                };
            // v2: the cursor is in a header, so the next request leaves before this page is
            // parsed; v1 has it in the body.
            let parsed = match paging {
                Paging::V2 => {
                    let cursor = answer
                        .headers
                        .get("after-cursor")
                        .and_then(|value| value.to_str().ok())
                        .map(str::trim)
                        .filter(|cursor| !cursor.is_empty())
                        .map(str::to_owned);
                    match cursor.map(|cursor| follow(cursor, &mut in_flight)) {
                        Some(Err(error)) => Err(error),
                        _ => parse_items::<T>(&answer.body, &url),
                    }
                }
                Paging::V1 => {
                    parse_v1_page::<T>(&answer.body, &url).and_then(
                        |(items, cursor)| match cursor {
                            Some(cursor) => follow(cursor, &mut in_flight).map(|()| items),
                            None => Ok(items),
                        },
                    )
                }
            };
            drop(answer);
            let failed = parsed.is_err();
            if sender.send(parsed).await.is_err() || failed {
                return;
            }
            match next_url {
                None => return,
                Some(next) => url = next,
            }
        }
    }

    /// GETs one JSON document; `Ok(None)` on 404.
    ///
    /// # Errors
    /// Any [`OneLoginError`] but [`OneLoginError::NotFound`].
    pub async fn get_json(&self, path_and_query: &str) -> Result<Option<Value>, OneLoginError> {
        let url = self.url_for(path_and_query)?;
        match self.send(Method::GET, &url, None).await {
            Ok(answer) => parse_json(&answer.body, &url).map(Some),
            Err(OneLoginError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// PUTs `body` as JSON to `path` and returns the answer's JSON (`null` when empty).
    ///
    /// # Errors
    /// Any [`OneLoginError`].
    pub async fn put_json(&self, path: &str, body: &Value) -> Result<Value, OneLoginError> {
        let url = self.url_for(path)?;
        let answer = self.send(Method::PUT, &url, Some(body)).await?;
        if answer.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        parse_json(&answer.body, &url)
    }

    /// Makes sure a token can be had (for `check-config --connect`).
    ///
    /// # Errors
    /// [`OneLoginError::Auth`] when the token endpoint refuses.
    pub async fn authenticate(&self) -> Result<(), OneLoginError> {
        self.token().await.map(drop)
    }

    fn url_for(&self, path_and_query: &str) -> Result<Url, OneLoginError> {
        if !path_and_query.starts_with('/') || path_and_query.starts_with("//") {
            return Err(OneLoginError::InvalidUrl {
                path: path_and_query.to_owned(),
                message: "the path must start with a single /".to_owned(),
            });
        }
        self.inner
            .api_url
            .join(path_and_query)
            .map_err(|error| OneLoginError::InvalidUrl {
                path: path_and_query.to_owned(),
                message: error.to_string(),
            })
    }

    fn count(&self, path: &str) {
        *lock(&self.inner.requests)
            .entry(path.to_owned())
            .or_default() += 1;
    }

    /// The cached token, or a new one.
    async fn token(&self) -> Result<Secret, OneLoginError> {
        let mut cached = self.inner.token.lock().await;
        if let Some(token) = cached.as_ref()
            && Instant::now() < token.refresh_at
        {
            return Ok(token.value.clone());
        }
        let fresh = self.request_token().await?;
        let value = fresh.value.clone();
        *cached = Some(fresh);
        Ok(value)
    }

    async fn invalidate_token(&self) {
        *self.inner.token.lock().await = None;
    }

    /// `POST /auth/oauth2/v2/token` with the client id and secret as HTTP Basic and
    /// `{"grant_type": "client_credentials"}`.
    async fn request_token(&self) -> Result<CachedToken, OneLoginError> {
        let inner = &*self.inner;
        let auth_error = |message: String| OneLoginError::Auth {
            client_id: inner.client_id.clone(),
            message,
        };
        let url = self.url_for("/auth/oauth2/v2/token")?;
        let basic = STANDARD.encode(format!(
            "{}:{}",
            inner.client_id,
            inner.client_secret.expose()
        ));
        crate::net::redact::register_issued(&basic);
        let mut authorization = HeaderValue::from_str(&format!("Basic {basic}")).map_err(|_| {
            auth_error("the client id or secret holds characters a header cannot carry".into())
        })?;
        authorization.set_sensitive(true);
        let mut last_error = String::new();
        for attempt in 1..=TOKEN_ATTEMPTS {
            self.count(url.path());
            let response = inner
                .http
                .post(url.clone())
                .header(AUTHORIZATION, authorization.clone())
                .header(ACCEPT, "application/json")
                .header(CONTENT_TYPE, "application/json")
                .body(r#"{"grant_type":"client_credentials"}"#)
                .send()
                .await;
            let response = match response {
                Ok(response) => response,
                Err(error) => {
                    last_error =
                        format!("the token request failed: {}", describe_transport(&error));
                    tokio::time::sleep(inner.backoff.delay(attempt, None)).await;
                    continue;
                }
            };
            let status = response.status();
            let headers = response.headers().clone();
            // An error answer comes back scrubbed: it may quote the request back.
            let body = crate::net::redact::read_body(response)
                .await
                .unwrap_or_default();
            if status.is_success() {
                let value: Value = serde_json::from_slice(&body).map_err(|error| {
                    auth_error(format!("the token answer is not JSON ({error})"))
                })?;
                let Some(token) = value.get("access_token").and_then(Value::as_str) else {
                    return Err(auth_error("the token answer has no access_token".into()));
                };
                let lifetime = Duration::from_secs(
                    value
                        .get("expires_in")
                        .and_then(Value::as_u64)
                        .unwrap_or(36_000),
                );
                let margin = TOKEN_MARGIN.min(lifetime / 10);
                crate::net::redact::register_issued(token);
                return Ok(CachedToken {
                    value: Secret::new(token),
                    refresh_at: Instant::now() + lifetime.saturating_sub(margin),
                });
            }
            let detail = error_detail(&body, status);
            if status.is_server_error() {
                last_error = format!(
                    "the token endpoint answered {}{} every time; OneLogin answers 5xx to the \
                     credentials of an admin who was deleted or lost the role that created \
                     them: create new API credentials (Administration → Developers → API \
                     Credentials) and put them in [source.onelogin]",
                    status.as_u16(),
                    with_colon(&detail)
                );
                tokio::time::sleep(inner.backoff.delay(attempt, None)).await;
                continue;
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                let now = SystemTime::now();
                let wait = rate_wait(&headers, now)
                    .or(RateLimit::from_headers(&headers)
                        .reset
                        .map(Duration::from_secs))
                    .unwrap_or_else(|| inner.backoff.delay(attempt, None));
                last_error = "the token endpoint kept rate-limiting (429)".into();
                tokio::time::sleep(wait.min(MAX_RATE_LIMIT_WAIT)).await;
                continue;
            }
            return Err(auth_error(format!(
                "the token endpoint answered {}{}; check source.onelogin.client_id and \
                 client_secret (Administration → Developers → API Credentials) and api_url",
                status.as_u16(),
                with_colon(&detail)
            )));
        }
        Err(auth_error(last_error))
    }

    /// Sends one request with retries; returns a 2xx answer.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
    ) -> Result<Answer, OneLoginError> {
        let encoded = body.map(Value::to_string);
        let call = CallState::default();
        let shown = display_url(url);
        retry::retry(
            &self.inner.backoff,
            || self.attempt(&method, url, encoded.as_deref(), &call),
            |retry_no, delay, error: &OneLoginError| {
                retry::log_retry("OneLogin", &method, &shown, retry_no, delay, error);
            },
        )
        .await
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&str>,
        call: &CallState,
    ) -> Result<Answer, Attempt<OneLoginError>> {
        let inner = &*self.inner;
        let shown = display_url(url);
        loop {
            self.wait_for_gate(&shown).await.map_err(Attempt::Fatal)?;
            let token = self.token().await.map_err(Attempt::Fatal)?;
            let mut bearer =
                HeaderValue::from_str(&format!("Bearer {}", token.expose())).map_err(|_| {
                    Attempt::Fatal(OneLoginError::InvalidResponse {
                        url: shown.clone(),
                        message: "the access token cannot be sent in a header".into(),
                    })
                })?;
            bearer.set_sensitive(true);
            let mut request = inner
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, bearer)
                .header(ACCEPT, "application/json");
            if let Some(body) = body {
                request = request
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.to_owned());
            }
            let sent = call.sent.fetch_add(1, Ordering::Relaxed) + 1;
            self.count(url.path());
            let transport = |error: reqwest::Error| Attempt::Retry {
                error: OneLoginError::Transport {
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
            let limit = RateLimit::from_headers(&headers);
            if status != StatusCode::TOO_MANY_REQUESTS
                && limit.is_low()
                && let Some(reset) = limit.reset
            {
                self.close_gate(Duration::from_secs(reset), now);
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
                StatusCode::UNAUTHORIZED if !call.reauthenticated.swap(true, Ordering::Relaxed) => {
                    tracing::debug!(
                        message = "OneLogin answered 401; sending again with a fresh token.",
                        url = %shown
                    );
                    self.invalidate_token().await;
                    continue;
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(Attempt::Fatal(OneLoginError::Refused {
                        hint: permission_hint(method, url.path()),
                        url: shown,
                        status: status.as_u16(),
                        detail,
                    }));
                }
                StatusCode::NOT_FOUND => {
                    return Err(Attempt::Fatal(OneLoginError::NotFound {
                        url: shown,
                        detail,
                    }));
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    let wait = rate_wait(&headers, now).or(limit.reset.map(Duration::from_secs));
                    if let Some(wait) = wait {
                        if wait > MAX_RATE_LIMIT_WAIT {
                            return Err(Attempt::Fatal(OneLoginError::RateLimitTooLong {
                                url: shown,
                                reset_at: reset_date(wait, now),
                            }));
                        }
                        self.close_gate(wait, now);
                    }
                    tracing::warn!(
                        message = "OneLogin rate limit exceeded (429).",
                        url = %shown,
                        wait_ms = wait.map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX))
                    );
                    return Err(Attempt::Retry {
                        error: OneLoginError::RateLimited {
                            url: shown,
                            attempts: sent,
                        },
                        after: wait,
                    });
                }
                _ => {}
            }
            if status.is_server_error() {
                let error = OneLoginError::Unavailable {
                    url: shown,
                    status: status.as_u16(),
                    attempts: sent,
                    detail,
                };
                return Err(match retry::classify_status(status, &headers, now) {
                    Verdict::RetryAfter(after) => Attempt::Retry { error, after },
                    Verdict::Done | Verdict::Fail => Attempt::Fatal(error),
                });
            }
            return Err(Attempt::Fatal(OneLoginError::Rejected {
                url: shown,
                status: status.as_u16(),
                detail,
            }));
        }
    }

    /// Waits until the account's budget is open again; fails when that is too far away.
    async fn wait_for_gate(&self, shown: &str) -> Result<(), OneLoginError> {
        loop {
            let Some((until, date)) = *lock(&self.inner.gate) else {
                return Ok(());
            };
            let now = Instant::now();
            if until <= now {
                let mut gate = lock(&self.inner.gate);
                if gate.is_some_and(|(until, _)| until <= now) {
                    *gate = None;
                }
                return Ok(());
            }
            let wait = until - now;
            if wait > MAX_RATE_LIMIT_WAIT {
                return Err(OneLoginError::RateLimitTooLong {
                    url: shown.to_owned(),
                    reset_at: date.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                });
            }
            tracing::warn!(
                message = "OneLogin rate limit nearly used up; waiting for the reset.",
                url = %shown,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)
            );
            tokio::time::sleep_until(until).await;
        }
    }

    /// Closes the gate for `wait` (a later closing time wins).
    fn close_gate(&self, wait: Duration, now: SystemTime) {
        let until = Instant::now() + wait;
        let date = DateTime::<Utc>::from(now + wait);
        let mut gate = lock(&self.inner.gate);
        if gate.is_none_or(|(current, _)| current < until) {
            *gate = Some((until, date));
        }
    }
}

/// The `X-RateLimit-*` headers of one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RateLimit {
    limit: Option<u64>,
    remaining: Option<u64>,
    /// Seconds until the window resets.
    reset: Option<u64>,
}

impl RateLimit {
    pub(crate) fn from_headers(headers: &HeaderMap) -> RateLimit {
        let number = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<u64>().ok())
        };
        RateLimit {
            limit: number("x-ratelimit-limit"),
            remaining: number("x-ratelimit-remaining"),
            reset: number("x-ratelimit-reset"),
        }
    }

    /// Whether the budget is nearly used up: `Remaining <= max(1, Limit / 50)`.
    pub(crate) fn is_low(&self) -> bool {
        self.remaining
            .is_some_and(|remaining| remaining <= (self.limit.unwrap_or(0) / 50).max(1))
    }
}

/// `Retry-After` as a wait (uncapped: the caller decides what is too long).
fn rate_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| retry::parse_retry_after(value, now))
}

fn reset_date(wait: Duration, now: SystemTime) -> String {
    DateTime::<Utc>::from(now + wait).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What the API credential needs for `method path`.
pub(crate) fn permission_hint(method: &Method, path: &str) -> String {
    if *method == Method::GET {
        format!(
            "the API credential needs the \"Read users\" permission (or \"Manage users\") to \
             read {path}: Administration → Developers → API Credentials"
        )
    } else {
        "write-back needs an API credential with the \"Manage users\" permission: \
         Administration → Developers → API Credentials → New Credential → Manage users"
            .to_owned()
    }
}

/// OneLogin's error body: v2 `{"statusCode", "name", "message"}`, v1
/// `{"status": {"error", "code", "type", "message"}}`, or the body's start.
fn error_detail(body: &[u8], status: StatusCode) -> String {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let text = |value: Option<&Value>| {
            value.map(|value| match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            })
        };
        let message = text(value.get("message"))
            .or_else(|| text(value.pointer("/status/message")))
            .or_else(|| text(value.get("error_description")));
        let name = text(value.get("name"))
            .or_else(|| text(value.pointer("/status/type")))
            .or_else(|| text(value.get("error")));
        match (name, message) {
            (Some(name), Some(message)) => return format!("{name}: {message}"),
            (None, Some(message)) | (Some(message), None) => return message,
            (None, None) => {}
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        status.canonical_reason().unwrap_or_default().to_owned()
    } else {
        format!("the body starts {:?}", excerpt(text))
    }
}

fn server_date(headers: &HeaderMap) -> Option<SystemTime> {
    headers
        .get(DATE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| httpdate::parse_http_date(value).ok())
}

/// `url` with query parameter `name` set to `value` (replacing an earlier one).
fn with_param(url: &Url, name: &str, value: &str) -> Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(key, _)| key != name)
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    let mut next = url.clone();
    {
        let mut query = next.query_pairs_mut();
        query.clear();
        for (key, value) in &pairs {
            query.append_pair(key, value);
        }
        query.append_pair(name, value);
    }
    next
}

fn parse_items<T: DeserializeOwned>(body: &[u8], url: &Url) -> Result<Vec<T>, OneLoginError> {
    let is_array = body
        .iter()
        .find(|byte| !byte.is_ascii_whitespace())
        .is_some_and(|byte| *byte == b'[');
    if !is_array {
        let other = parse_json(body, url)?;
        return Err(OneLoginError::InvalidResponse {
            url: display_url(url),
            message: format!("expected a JSON array of items, got {}", kind_of(&other)),
        });
    }
    serde_json::from_slice(body).map_err(|error| invalid_json(&error, url))
}

/// A v1 page: its `data` items and `pagination.after_cursor`.
fn parse_v1_page<T: DeserializeOwned>(
    body: &[u8],
    url: &Url,
) -> Result<(Vec<T>, Option<String>), OneLoginError> {
    #[derive(serde::Deserialize)]
    struct Page<T> {
        data: Option<Vec<T>>,
        pagination: Option<Pagination>,
    }
    #[derive(serde::Deserialize)]
    struct Pagination {
        after_cursor: Option<String>,
    }
    let page: Page<T> = serde_json::from_slice(body).map_err(|error| invalid_json(&error, url))?;
    let Some(data) = page.data else {
        return Err(OneLoginError::InvalidResponse {
            url: display_url(url),
            message: "the page has no `data` array".into(),
        });
    };
    let cursor = page
        .pagination
        .and_then(|pagination| pagination.after_cursor)
        .filter(|cursor| !cursor.is_empty());
    Ok((data, cursor))
}

fn parse_json(body: &[u8], url: &Url) -> Result<Value, OneLoginError> {
    serde_json::from_slice(body).map_err(|error| invalid_json(&error, url))
}

fn invalid_json(error: &serde_json::Error, url: &Url) -> OneLoginError {
    OneLoginError::InvalidResponse {
        url: display_url(url),
        message: if error.is_eof() {
            format!("the JSON is cut off ({error})")
        } else {
            format!("not valid JSON ({error})")
        },
    }
}

/// A URL for messages: its path and query (which never hold a secret here).
pub(crate) fn display_url(url: &Url) -> String {
    match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_low_at_two_percent() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-limit", HeaderValue::from_static("5000"));
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("100"));
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("1200"));
        let limit = RateLimit::from_headers(&headers);
        assert!(limit.is_low());
        assert_eq!(limit.reset, Some(1200));
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("101"));
        assert!(!RateLimit::from_headers(&headers).is_low());
    }

    #[test]
    fn error_bodies_of_both_versions_are_read() {
        let v2 = br#"{"statusCode":400,"name":"BadRequestError","message":"Invalid cursor"}"#;
        assert_eq!(
            error_detail(v2, StatusCode::BAD_REQUEST),
            "BadRequestError: Invalid cursor"
        );
        let v1 = br#"{"status":{"error":true,"code":401,"type":"Unauthorized","message":"Authentication Failure"}}"#;
        assert_eq!(
            error_detail(v1, StatusCode::UNAUTHORIZED),
            "Unauthorized: Authentication Failure"
        );
        assert_eq!(error_detail(b"", StatusCode::BAD_GATEWAY), "Bad Gateway");
    }

    #[test]
    fn a_cursor_replaces_the_previous_one_and_keeps_the_filters() {
        let url =
            Url::parse("https://x.onelogin.com/api/2/users?limit=100&fields=id%2Cemail&cursor=a")
                .expect("valid");
        let next = with_param(&url, "cursor", "b c");
        assert_eq!(next.query(), Some("limit=100&fields=id%2Cemail&cursor=b+c"));
    }
}
