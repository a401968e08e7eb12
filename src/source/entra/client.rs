//! The HTTP client for Microsoft Graph: authenticated GETs that follow `@odata.nextLink` pages to
//! the `@odata.deltaLink`, single documents, and JSON PATCHes.
//!
//! Every request goes through [`retry::retry`]: 429 and 503 wait for `Retry-After` (whole or
//! fractional seconds, or an HTTP date) when Graph sends it, and back off exponentially with
//! jitter otherwise, as do other 5xx and transport errors. A 401 drops the cached token and is
//! sent once more. An expired or unknown delta token (`syncStateNotFound`, or `410 Gone`) is
//! [`GraphError::SyncStateExpired`] at once, never retried: the caller starts a full read.
//!
//! Links are followed only on `graph_url`'s origin, so the access token never leaves Microsoft
//! Graph. Every error names the URL, as its path and query (which hold no credential); long
//! `$skiptoken` and `$deltatoken` values are cut short there, for readability.

use crate::net::text::{describe_transport, excerpt, kind_of, lock, with_colon};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use url::Url;

use super::auth::{GraphAuth, GraphAuthError, READ_PERMISSIONS};
use crate::net::retry::{self, Attempt, Backoff, Verdict};

/// The longest single wait that a `Retry-After` may ask for; longer ones are cut to it (and the
/// request is throttled again if Graph still refuses it).
pub const MAX_THROTTLE_WAIT: Duration = retry::MAX_RATE_LIMIT_WAIT;

/// What went wrong with a Graph request, named by what the caller does next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GraphError {
    /// 401 twice (the second time with a fresh token): Graph does not accept the tokens that
    /// the identity platform issues for this app.
    #[error(
        "Microsoft Graph did not accept the access token of {who} for {url} ({status}{}); check \
         that graph_url and login_url belong to the same cloud and that the app is enabled",
        code_and_message(.code, .message)
    )]
    Unauthorized {
        /// `tenant <tenant_id>, client <client_id>`.
        who: String,
        /// The URL (path and query).
        url: String,
        /// The HTTP status.
        status: u16,
        /// Graph's error code (`InvalidAuthenticationToken`), if any.
        code: Option<String>,
        /// Graph's message.
        message: String,
    },
    /// 403: the app lacks an application permission (or admin consent for it).
    #[error("Microsoft Graph refused {url} to {who} (403{}); {hint}", code_and_message(.code, .message))]
    Forbidden {
        /// `tenant <tenant_id>, client <client_id>`.
        who: String,
        /// The URL (path and query).
        url: String,
        /// Graph's error code (`Authorization_RequestDenied`), if any.
        code: Option<String>,
        /// Graph's message.
        message: String,
        /// What to grant: the permission this endpoint needs.
        hint: String,
    },
    /// The delta link expired or is unknown (`syncStateNotFound`, or `410 Gone`): read in full.
    #[error(
        "Microsoft Graph no longer knows the delta link {url} ({status}{}); a full read is needed",
        with_colon(.detail)
    )]
    SyncStateExpired {
        /// The URL (path and query).
        url: String,
        /// The HTTP status (400 or 410).
        status: u16,
        /// Graph's explanation.
        detail: String,
    },
    /// 404: the object does not exist (for example a deleted user, or a user without manager).
    #[error("not found in Microsoft Graph: {url}{}", code_and_message_after_colon(.code, .message))]
    NotFound {
        /// The URL (path and query).
        url: String,
        /// Graph's error code (`Request_ResourceNotFound`), if any.
        code: Option<String>,
        /// Graph's message.
        message: String,
    },
    /// 429 that outlasted the retries.
    #[error(
        "Microsoft Graph kept throttling {url} (429) after {attempts} attempts{}; lower the load \
         on this tenant or run at a quieter time",
        with_colon(.detail)
    )]
    Throttled {
        /// The URL (path and query).
        url: String,
        /// Requests sent.
        attempts: u32,
        /// Graph's explanation and throttling headers.
        detail: String,
    },
    /// 5xx that outlasted the retries.
    #[error(
        "Microsoft Graph is unavailable for {url} ({status}) after {attempts} attempts{}",
        with_colon(.detail)
    )]
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
    #[error("cannot reach Microsoft Graph for {url}: {message}")]
    Transport {
        /// The URL (path and query).
        url: String,
        /// What failed.
        message: String,
    },
    /// An answer that cannot be read: not JSON, a page without a `value` array, or a link that
    /// leaves Graph or loops.
    #[error("Microsoft Graph sent an answer for {url} that cannot be read: {message}")]
    InvalidResponse {
        /// The URL (path and query).
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// Another 4xx (or a permanent 5xx such as 501 for an unsupported property): Graph refused
    /// the request; retrying will not help.
    #[error("Microsoft Graph rejected {url} ({status}{})", code_and_message(.code, .message))]
    Rejected {
        /// The URL (path and query).
        url: String,
        /// The HTTP status.
        status: u16,
        /// Graph's error code (`Request_BadRequest`), if any.
        code: Option<String>,
        /// Graph's message.
        message: String,
    },
    /// A path or link that is not a URL on `graph_url` (for example a delta link stored while
    /// `graph_url` named another cloud).
    #[error("cannot request {url} from Microsoft Graph: {message}")]
    InvalidUrl {
        /// The path or URL as given (shortened).
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// Authentication failed: the token endpoint refused, or a credential cannot be used.
    #[error("cannot authenticate to Microsoft Graph: {0}")]
    Auth(Box<GraphAuthError>),
}

impl From<GraphAuthError> for GraphError {
    fn from(error: GraphAuthError) -> GraphError {
        GraphError::Auth(Box::new(error))
    }
}

/// The Graph client. Cheap to clone; clones share the connection pool, the token and the
/// request counters.
#[derive(Debug, Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

/// What the clones share.
#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    /// Graph's base URL; links must stay on its origin.
    graph_url: Url,
    auth: GraphAuth,
    backoff: Backoff,
    /// Requests sent, by path. A std mutex: held only to bump a counter.
    requests: Mutex<BTreeMap<String, u64>>,
}

/// A 2xx answer's body.
struct Answer {
    body: Vec<u8>,
}

/// Per-call state that outlives one attempt.
#[derive(Default)]
struct CallState {
    /// Requests sent for this call.
    sent: AtomicU32,
    /// Whether a 401 already made us drop the token and send again.
    reauthenticated: AtomicBool,
}

/// One page of a collection: its items and links.
struct Page {
    items: Vec<Value>,
    next_link: Option<String>,
    delta_link: Option<String>,
}

impl GraphClient {
    /// Builds a client for Graph at `graph_url` (`https://graph.microsoft.com`, or a national
    /// cloud's) with a request `timeout` and at most `max_retries` retries per request (429, 5xx
    /// and transport errors).
    ///
    /// # Errors
    /// [`GraphError::Transport`] when the HTTP client (TLS stack) cannot be initialised.
    pub fn new(
        graph_url: Url,
        auth: GraphAuth,
        timeout: Duration,
        max_retries: u32,
    ) -> Result<GraphClient, GraphError> {
        let backoff = Backoff::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
            max_retries,
        );
        Self::with_backoff(graph_url, auth, timeout, backoff)
    }

    /// Like [`GraphClient::new`] with a given retry policy (tests use short delays). Waits that
    /// Graph asks for (`Retry-After`) are capped at [`MAX_THROTTLE_WAIT`].
    ///
    /// # Errors
    /// [`GraphError::Transport`] when the HTTP client (TLS stack) cannot be initialised.
    pub fn with_backoff(
        graph_url: Url,
        auth: GraphAuth,
        timeout: Duration,
        backoff: Backoff,
    ) -> Result<GraphClient, GraphError> {
        let http = crate::net::http_client_builder(timeout)
            .build()
            .map_err(|error| GraphError::Transport {
                url: display_url(&graph_url),
                message: describe_transport(&error),
            })?;
        Ok(GraphClient {
            inner: Arc::new(Inner {
                http,
                graph_url,
                auth,
                backoff: backoff.with_max_hint(MAX_THROTTLE_WAIT),
                requests: Mutex::new(BTreeMap::new()),
            }),
        })
    }

    /// GETs `path_or_url` and follows `@odata.nextLink` until a page has none, calling
    /// `on_page` with each page's `value` items; returns the last page's `@odata.deltaLink`, if
    /// it has one (delta queries), as an absolute URL to store and pass back here next time.
    ///
    /// `path_or_url` is a path relative to `graph_url` (`/v1.0/users/delta?$select=id,mail`) or
    /// an absolute URL on `graph_url`'s origin (a stored delta link). Links are followed exactly
    /// as given (their tokens are opaque). A page that has both links is a Graph bug: the next
    /// link is followed (and the oddity logged at debug level). Stops early, returning
    /// `Ok(None)`, when `on_page` returns `Ok(false)`.
    ///
    /// # Errors
    /// Any [`GraphError`] of a page, or of `on_page`; [`GraphError::SyncStateExpired`] when a
    /// delta link has expired; [`GraphError::InvalidResponse`] when a page is not JSON, has no
    /// `value` array, or a link leaves Graph's origin or points back to the same page;
    /// [`GraphError::InvalidUrl`] when `path_or_url` is not on `graph_url`.
    pub async fn get_pages(
        &self,
        path_or_url: &str,
        mut on_page: impl FnMut(Vec<Value>) -> Result<bool, GraphError>,
    ) -> Result<Option<String>, GraphError> {
        let mut url = self.url_for(path_or_url)?;
        loop {
            let answer = self.send(Method::GET, &url, None).await?;
            let page = parse_page(&answer.body, &url)?;
            let next = page
                .next_link
                .map(|link| self.link(&url, &link, "@odata.nextLink"))
                .transpose()?;
            let delta = page
                .delta_link
                .map(|link| self.link(&url, &link, "@odata.deltaLink"))
                .transpose()?;
            if next.is_some() && delta.is_some() {
                tracing::debug!(
                    message = "A Graph page has both a nextLink and a deltaLink; following the nextLink.",
                    url = %display_url(&url)
                );
            }
            if !on_page(page.items)? {
                return Ok(None);
            }
            match next {
                None => return Ok(delta.map(String::from)),
                Some(next) if next == url => {
                    return Err(GraphError::InvalidResponse {
                        url: display_url(&url),
                        message: "the @odata.nextLink points back to the same page".to_owned(),
                    });
                }
                Some(next) => url = next,
            }
        }
    }

    /// GETs one JSON document (e.g. `/v1.0/users/{id}?$select=id,mail`); `Ok(None)` on 404.
    ///
    /// # Errors
    /// Any [`GraphError`] but [`GraphError::NotFound`].
    pub async fn get_json(&self, path: &str) -> Result<Option<Value>, GraphError> {
        let url = self.url_for(path)?;
        match self.send(Method::GET, &url, None).await {
            Ok(answer) => parse_json(&answer.body, &url).map(Some),
            Err(GraphError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// PATCHes `body` as JSON to `path` (e.g. `/v1.0/users/{id}` with
    /// `{"extension_<appid>_socialTalentId": "…"}`); Graph answers `204 No Content`.
    ///
    /// # Errors
    /// Any [`GraphError`]; [`GraphError::NotFound`] when the object is gone;
    /// [`GraphError::Forbidden`] naming `User.ReadWrite.All` when the app may not write users.
    pub async fn patch_json(&self, path: &str, body: &Value) -> Result<(), GraphError> {
        let url = self.url_for(path)?;
        self.send(Method::PATCH, &url, Some(body)).await?;
        Ok(())
    }

    /// Requests sent to Graph, by path without query (e.g. `/v1.0/users/delta` → 3); retries
    /// and re-sends after a 401 count, token requests do not.
    #[must_use]
    pub fn requests(&self) -> BTreeMap<String, u64> {
        lock(&self.inner.requests).clone()
    }

    /// The URL that `path_or_url` names: a path appended to `graph_url` (keeping a path that
    /// `graph_url` has, for a proxy), or an absolute URL on `graph_url`'s origin.
    fn url_for(&self, path_or_url: &str) -> Result<Url, GraphError> {
        let invalid = |message: String| GraphError::InvalidUrl {
            url: excerpt(path_or_url),
            message,
        };
        let graph_url = &self.inner.graph_url;
        if path_or_url.starts_with('/') {
            if path_or_url.starts_with("//") {
                return Err(invalid("the path must start with a single /".to_owned()));
            }
            let base = graph_url.as_str().trim_end_matches('/');
            return Url::parse(&format!("{base}{path_or_url}"))
                .map_err(|error| invalid(error.to_string()));
        }
        let url = Url::parse(path_or_url).map_err(|error| {
            invalid(format!(
                "neither a path starting with / nor an absolute URL ({error})"
            ))
        })?;
        if url.origin() != graph_url.origin() {
            return Err(invalid(format!(
                "the URL is not on graph_url ({}); refusing to send the access token there",
                graph_url.origin().ascii_serialization()
            )));
        }
        Ok(url)
    }

    /// A page's link (`what`), resolved against the page's `url` and checked to stay on
    /// `graph_url`'s origin.
    fn link(&self, url: &Url, link: &str, what: &str) -> Result<Url, GraphError> {
        let invalid = |message: String| GraphError::InvalidResponse {
            url: display_url(url),
            message,
        };
        let target = url
            .join(link)
            .map_err(|error| invalid(format!("bad {what} ({error})")))?;
        if target.origin() != self.inner.graph_url.origin() {
            return Err(invalid(format!(
                "the {what} leaves Microsoft Graph ({}), refusing to follow it",
                target.origin().ascii_serialization()
            )));
        }
        Ok(target)
    }

    /// Sends one request with retries; returns a 2xx answer.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<&Value>,
    ) -> Result<Answer, GraphError> {
        let encoded = body.map(Value::to_string);
        let call = CallState::default();
        let shown = display_url(url);
        retry::retry(
            &self.inner.backoff,
            || self.attempt(&method, url, encoded.as_deref(), &call),
            |retry_no, delay, error: &GraphError| {
                retry::log_retry("Microsoft Graph", &method, &shown, retry_no, delay, error);
            },
        )
        .await
    }

    /// One attempt: authenticates and sends; sends again at once with a fresh token after a
    /// first 401.
    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&str>,
        call: &CallState,
    ) -> Result<Answer, Attempt<GraphError>> {
        let inner = &*self.inner;
        let shown = display_url(url);
        loop {
            let token = inner.auth.bearer(&inner.http).await.map_err(|error| {
                if error.is_transient() {
                    Attempt::Retry {
                        after: error.retry_after(),
                        error: GraphError::from(error),
                    }
                } else {
                    Attempt::Fatal(GraphError::from(error))
                }
            })?;
            let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                .map_err(|_| {
                    Attempt::Fatal(GraphError::InvalidResponse {
                        url: shown.clone(),
                        message: "the access token cannot be sent in an HTTP header".to_owned(),
                    })
                })?;
            authorization.set_sensitive(true);
            let mut request = inner
                .http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, authorization)
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
                error: GraphError::Transport {
                    url: shown.clone(),
                    message: describe_transport(&error),
                },
                after: None,
            };
            let response = request.send().await.map_err(transport)?;
            let status = response.status();
            let headers = response.headers().clone();
            // An error answer comes back scrubbed: it may quote the request back.
            let body: Vec<u8> = crate::net::redact::read_body(response)
                .await
                .map_err(transport)?
                .into();
            if status.is_success() {
                return Ok(Answer { body });
            }

            let detail = ErrorDetail::parse(&body, status);
            if status == StatusCode::UNAUTHORIZED {
                if !call.reauthenticated.swap(true, Ordering::Relaxed) {
                    tracing::debug!(
                        message = "Microsoft Graph answered 401; sending again with a fresh token.",
                        url = %shown
                    );
                    inner.auth.invalidate();
                    continue;
                }
                return Err(Attempt::Fatal(GraphError::Unauthorized {
                    who: inner.auth.describe(),
                    url: shown,
                    status: status.as_u16(),
                    code: detail.code,
                    message: detail.message,
                }));
            }
            return Err(classify_failure(
                &inner.auth,
                method,
                url,
                status,
                &headers,
                &body,
                detail,
                sent,
            ));
        }
    }
}

/// What a failed answer (other than 401) means, and whether to retry it.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the arguments are the answer's parts"
)]
fn classify_failure(
    auth: &GraphAuth,
    method: &Method,
    url: &Url,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    detail: ErrorDetail,
    sent: u32,
) -> Attempt<GraphError> {
    let shown = display_url(url);
    if status == StatusCode::FORBIDDEN {
        return Attempt::Fatal(GraphError::Forbidden {
            who: auth.describe(),
            hint: forbidden_hint(method, url.path()),
            url: shown,
            code: detail.code,
            message: detail.message,
        });
    }
    if status == StatusCode::GONE
        || (status.is_client_error()
            && status != StatusCode::TOO_MANY_REQUESTS
            && mentions_expired_sync_state(body))
    {
        if let Some(location) = headers.get(reqwest::header::LOCATION) {
            tracing::debug!(
                message = "Microsoft Graph asks for a new full synchronisation.",
                url = %shown,
                location = location.to_str().unwrap_or("(not ASCII)")
            );
        }
        return Attempt::Fatal(GraphError::SyncStateExpired {
            url: shown,
            status: status.as_u16(),
            detail: detail.summary(),
        });
    }
    if status == StatusCode::NOT_FOUND {
        return Attempt::Fatal(GraphError::NotFound {
            url: shown,
            code: detail.code,
            message: detail.message,
        });
    }
    let verdict = retry::classify_status(status, headers, SystemTime::now());
    if status == StatusCode::TOO_MANY_REQUESTS {
        let throttle = throttle_headers(headers);
        let error = GraphError::Throttled {
            url: shown,
            attempts: sent,
            detail: match (detail.summary(), throttle) {
                (summary, None) => summary,
                (summary, Some(throttle)) if summary.is_empty() => throttle,
                (summary, Some(throttle)) => format!("{summary} [{throttle}]"),
            },
        };
        let after = match verdict {
            Verdict::RetryAfter(after) => after,
            Verdict::Done | Verdict::Fail => None,
        };
        // A wait longer than one may last fails the run at once, naming its end.
        if let Some(why) = after.and_then(|wait| retry::wait_too_long(wait, SystemTime::now())) {
            return Attempt::Fatal(match error {
                GraphError::Throttled {
                    url,
                    attempts,
                    detail,
                } => GraphError::Throttled {
                    url,
                    attempts,
                    detail: if detail.is_empty() {
                        why
                    } else {
                        format!("{detail}; {why}")
                    },
                },
                other => other,
            });
        }
        return Attempt::Retry { error, after };
    }
    match verdict {
        Verdict::RetryAfter(after) => Attempt::Retry {
            error: GraphError::Unavailable {
                url: shown,
                status: status.as_u16(),
                attempts: sent,
                detail: detail.summary(),
            },
            after,
        },
        Verdict::Done | Verdict::Fail => Attempt::Fatal(GraphError::Rejected {
            url: shown,
            status: status.as_u16(),
            code: detail.code,
            message: detail.message,
        }),
    }
}

/// Graph's error envelope, `{"error": {"code", "message", "innerError": {…}}}`, or what stands
/// in for it.
struct ErrorDetail {
    /// `error.code`, if any.
    code: Option<String>,
    /// `error.message`, or the start of a body that is not an envelope, or the status's reason.
    message: String,
}

impl ErrorDetail {
    /// Reads Graph's error envelope, or describes a body that is not one.
    fn parse(body: &[u8], status: StatusCode) -> ErrorDetail {
        if let Ok(value) = serde_json::from_slice::<Value>(body)
            && let Some(error) = value.get("error").filter(|error| error.is_object())
        {
            let code = error
                .get("code")
                .and_then(Value::as_str)
                .filter(|code| !code.is_empty())
                .map(str::to_owned);
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            return ErrorDetail { code, message };
        }
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let message = if text.is_empty() {
            status.canonical_reason().unwrap_or_default().to_owned()
        } else {
            format!(
                "no Graph error in the body, which starts {:?}",
                excerpt(text)
            )
        };
        ErrorDetail {
            code: None,
            message,
        }
    }

    /// `code: message`, for the error variants that keep one string.
    fn summary(&self) -> String {
        match &self.code {
            Some(code) if self.message.is_empty() => code.clone(),
            Some(code) => format!("{code}: {}", self.message),
            None => self.message.clone(),
        }
    }
}

/// Whether an error body says that the delta token expired or is unknown: `syncStateNotFound`
/// (or Outlook's `SyncStateInvalid`), in any case, anywhere in the body (the code, the
/// `innerError`, or the message).
fn mentions_expired_sync_state(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    text.contains("syncstatenotfound") || text.contains("syncstateinvalid")
}

/// Graph's throttling headers of a 429, for the message: which limit, and its scope.
fn throttle_headers(headers: &HeaderMap) -> Option<String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .filter(|value| !value.is_empty())
    };
    match (
        header("x-ms-throttle-information"),
        header("x-ms-throttle-scope"),
    ) {
        (None, None) => None,
        (Some(information), None) => Some(information.to_owned()),
        (None, Some(scope)) => Some(format!("scope {scope}")),
        (Some(information), Some(scope)) => Some(format!("{information}, scope {scope}")),
    }
}

/// The hint of a 403: the application permission that `method path` needs.
fn forbidden_hint(method: &Method, path: &str) -> String {
    let permission = needed_permission(method, path);
    let grant = match permission {
        Some(permission) => format!(
            "grant the application permission {permission} to the app registration (API \
             permissions > Add a permission > Microsoft Graph > Application permissions)"
        ),
        None => format!(
            "check the app registration's application permissions (this source needs \
             {READ_PERMISSIONS})"
        ),
    };
    format!(
        "{grant}, then Grant admin consent; a permission granted minutes ago may not have \
         reached Graph yet"
    )
}

/// The least application permission that `method path` needs, when known. The path may start
/// with the API version (`/v1.0`, `/beta`) and a proxy's prefix before it.
fn needed_permission(method: &Method, path: &str) -> Option<&'static str> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let version = segments
        .iter()
        .position(|segment| *segment == "v1.0" || *segment == "beta")?;
    let rest = &segments[version + 1..];
    match rest.first().copied()? {
        "users" if *method != Method::GET => Some("User.ReadWrite.All"),
        "users" => match rest.get(2).copied() {
            Some("memberOf" | "transitiveMemberOf" | "getMemberGroups") => {
                Some("GroupMember.Read.All")
            }
            _ => Some("User.Read.All"),
        },
        "groups" if *method == Method::GET => Some("GroupMember.Read.All"),
        "directoryObjects" if *method == Method::GET => Some("User.Read.All"),
        _ => None,
    }
}

/// Reads a collection page: `{"value": […], "@odata.nextLink"?, "@odata.deltaLink"?}`.
fn parse_page(body: &[u8], url: &Url) -> Result<Page, GraphError> {
    let invalid = |message: String| GraphError::InvalidResponse {
        url: display_url(url),
        message,
    };
    let mut page = match parse_json(body, url)? {
        Value::Object(page) => page,
        other => {
            return Err(invalid(format!(
                "expected a JSON object with a value array, got {}",
                kind_of(&other)
            )));
        }
    };
    let items = match page.remove("value") {
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(invalid(format!(
                "the value is {}, not an array",
                kind_of(&other)
            )));
        }
        None => return Err(invalid("the page has no value array".to_owned())),
    };
    let mut link = |name: &str| match page.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(link)) => Ok(Some(link)),
        Some(other) => Err(invalid(format!(
            "the {name} is {}, not a string",
            kind_of(&other)
        ))),
    };
    Ok(Page {
        items,
        next_link: link("@odata.nextLink")?,
        delta_link: link("@odata.deltaLink")?,
    })
}

/// Parses a JSON body, naming the URL on failure.
fn parse_json(body: &[u8], url: &Url) -> Result<Value, GraphError> {
    serde_json::from_slice(body).map_err(|error| GraphError::InvalidResponse {
        url: display_url(url),
        message: if error.is_eof() {
            format!("the JSON is cut off ({error})")
        } else {
            format!("not valid JSON ({error})")
        },
    })
}

/// A URL for messages: its path and query (Graph URLs never carry credentials there), with the
/// values of `$skiptoken` and `$deltatoken` cut to their first characters when long (they run
/// to hundreds of characters and mean nothing to a reader).
pub(crate) fn display_url(url: &Url) -> String {
    const KEEP: usize = 12;
    let Some(query) = url.query() else {
        return url.path().to_owned();
    };
    let shortened: Vec<String> = query
        .split('&')
        .map(|pair| {
            if let Some((name, value)) = pair.split_once('=') {
                let bare = name.to_ascii_lowercase();
                let bare = bare
                    .strip_prefix("%24")
                    .or_else(|| bare.strip_prefix('$'))
                    .unwrap_or(&bare);
                if (bare == "skiptoken" || bare == "deltatoken")
                    && value.len() > 2 * KEEP
                    && let Some(start) = value.get(..KEEP)
                {
                    return format!("{name}={start}…");
                }
            }
            pair.to_owned()
        })
        .collect();
    format!("{}?{}", url.path(), shortened.join("&"))
}

/// ` code: message`, ` code`, `: message`, or nothing: what follows the status in a message.
fn code_and_message(code: &Option<String>, message: &str) -> String {
    match (code, message.is_empty()) {
        (Some(code), true) => format!(" {code}"),
        (Some(code), false) => format!(" {code}: {message}"),
        (None, true) => String::new(),
        (None, false) => format!(": {message}"),
    }
}

/// `: code: message`, `: code`, `: message`, or nothing: what follows the URL in a message.
fn code_and_message_after_colon(code: &Option<String>, message: &str) -> String {
    match (code, message.is_empty()) {
        (Some(code), true) => format!(": {code}"),
        (Some(code), false) => format!(": {code}: {message}"),
        (None, true) => String::new(),
        (None, false) => format!(": {message}"),
    }
}

#[cfg(test)]
mod tests;
