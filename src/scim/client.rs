//! The HTTP client for SocialTalent's SCIM API. Every request passes one [`Limiter`] (a retry
//! takes a new permit), 429/503 wait for `Retry-After`, 5xx and transport errors back off with
//! jitter, and other 4xx fail at once with the SCIM error's `detail`. TLS is always verified.

use crate::net::text::describe_transport;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde_json::Value;

use super::wire::{self, TargetUser};
use crate::config::{Secret, TargetConfig};
use crate::net::limiter::Limiter;
use crate::net::retry::{self, Attempt, Backoff, Verdict};

/// The SCIM media type.
const SCIM_JSON: HeaderValue = HeaderValue::from_static("application/scim+json");
/// At most this many read-back pages at a time, whatever `max_in_flight` allows the writes:
/// each page in flight is held whole while it is parsed, and 8 keep a loopback server busy.
const READ_BACK_PAGES_IN_FLIGHT: usize = 8;
/// What the client accepts.
const ACCEPT_JSON: HeaderValue =
    HeaderValue::from_static("application/scim+json, application/json");

/// What went wrong with a SCIM request, named by what the caller does next.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScimError {
    /// 401/403: the token is wrong or lacks rights; nothing will work until it is fixed.
    #[error("SocialTalent refused the credentials ({status}): {detail}; check target.token")]
    Unauthorized {
        /// The HTTP status.
        status: u16,
        /// The server's explanation.
        detail: String,
    },
    /// 404: the resource does not exist.
    #[error("not found in SocialTalent: {detail}")]
    NotFound {
        /// The server's explanation.
        detail: String,
    },
    /// 412: the account changed since it was read (`If-Match` did not match its version).
    #[error("SocialTalent reports the account changed while it was being updated (412): {detail}")]
    PreconditionFailed {
        /// The server's explanation.
        detail: String,
    },
    /// 409: a uniqueness conflict (the account exists already).
    #[error("SocialTalent reports a conflict (409): {detail}")]
    Conflict {
        /// The server's explanation.
        detail: String,
    },
    /// Another 4xx: the request was refused; retrying will not help.
    #[error("SocialTalent refused the request ({status}): {detail}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The SCIM error's `detail` (and `scimType`), or the body's start.
        detail: String,
    },
    /// 429/5xx that outlasted the retries.
    #[error("SocialTalent is unavailable ({status}) after {attempts} attempts: {detail}")]
    Unavailable {
        /// The last HTTP status.
        status: u16,
        /// Attempts made.
        attempts: u32,
        /// The last explanation.
        detail: String,
    },
    /// Connection, TLS or timeout errors that outlasted the retries.
    #[error("cannot reach SocialTalent at {url}: {message}")]
    Transport {
        /// The URL (without credentials).
        url: String,
        /// What failed.
        message: String,
    },
    /// A 2xx answer that cannot be understood.
    #[error("SocialTalent sent an answer that cannot be read ({context}): {message}")]
    InvalidResponse {
        /// Which request.
        context: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Counters shared by the client's clones, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Requests sent (retries included).
    pub requests: AtomicU64,
    /// Retries.
    pub retries: AtomicU64,
}

/// One page of `GET /Users`.
#[derive(Debug, Clone)]
pub struct UserPage {
    /// The users on the page.
    pub users: Vec<TargetUser>,
    /// `totalResults`.
    pub total_results: usize,
}

/// The SCIM client. Cheap to clone; clones share the limiter and the connection pool.
#[derive(Debug, Clone)]
pub struct ScimClient {
    http: reqwest::Client,
    base_url: String,
    /// `{base_url}/Users`, parsed once: creates and list pages do not parse it again.
    users_url: Url,
    /// `Bearer {token}`, built once and marked sensitive.
    authorization: HeaderValue,
    limiter: Limiter,
    backoff: Backoff,
    extension_schema: String,
    stats: Arc<ClientStats>,
}

impl ScimClient {
    /// Builds a client for `target` with its bearer token and the shared limiter.
    ///
    /// # Errors
    /// [`ScimError::Transport`] when the TLS stack cannot be initialised.
    pub fn new(
        target: &TargetConfig,
        token: Secret,
        limiter: Limiter,
    ) -> Result<ScimClient, ScimError> {
        crate::net::redact::register_secret(token.expose());
        let http = crate::net::http_client_builder(target.timeout)
            .pool_max_idle_per_host(target.max_in_flight)
            .build()
            .map_err(|error| ScimError::Transport {
                url: target.base_url.to_string(),
                message: error.to_string(),
            })?;
        let base_url = target.base_url.as_str().trim_end_matches('/').to_owned();
        let users_url =
            Url::parse(&format!("{base_url}/Users")).map_err(|error| ScimError::Transport {
                url: target.base_url.to_string(),
                message: error.to_string(),
            })?;
        Ok(ScimClient {
            http,
            base_url,
            users_url,
            authorization: authorization(&token),
            limiter,
            // A server asking for more than 15 minutes fails the run (see `attempt`) rather
            // than holding every write for an hour.
            backoff: Backoff::new(
                Duration::from_millis(500),
                Duration::from_secs(60),
                target.max_retries,
            )
            .with_max_hint(retry::MAX_RATE_LIMIT_WAIT),
            extension_schema: target.extension_schema.clone(),
            stats: Arc::new(ClientStats::default()),
        })
    }

    /// The counters.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// The limiter every request passes.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// The extension schema documents are built with.
    pub fn extension_schema(&self) -> &str {
        &self.extension_schema
    }

    /// `POST /Users` of `document` (a [`Value`], or a [`wire::UserDocument`] serialised straight
    /// from the attributes); returns the new account's id and the account as the server
    /// answered it (`None` without a readable body).
    ///
    /// # Errors
    /// [`ScimError::Conflict`] on 409 (the account exists), or any other [`ScimError`].
    pub async fn create<D: Serialize + ?Sized>(
        &self,
        document: &D,
    ) -> Result<(String, Option<TargetUser>), ScimError> {
        let answer = self
            .send(
                Method::POST,
                "/Users",
                &[],
                Some(encode(document, "POST /Users")?),
            )
            .await?;
        let value: Value =
            serde_json::from_slice(&answer.body).map_err(|error| ScimError::InvalidResponse {
                context: "POST /Users".into(),
                message: format!("the created account cannot be read: {error}"),
            })?;
        let id = value
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| ScimError::InvalidResponse {
                context: "POST /Users".into(),
                message: "the created account has no `id`".into(),
            })?
            .to_owned();
        Ok((id, wire::parse_user(&value, &self.extension_schema).ok()))
    }

    /// `GET /Users/{id}`: the account as SocialTalent holds it, whole, and its version (the
    /// `ETag` header, else `meta.version`) when the server gives one.
    ///
    /// # Errors
    /// [`ScimError::NotFound`] when the account is gone, or any other [`ScimError`].
    pub async fn get_user(&self, id: &str) -> Result<(Value, Option<String>), ScimError> {
        let answer = self.send(Method::GET, &user_path(id), &[], None).await?;
        let value: Value =
            serde_json::from_slice(&answer.body).map_err(|error| ScimError::InvalidResponse {
                context: "GET /Users/{id}".into(),
                message: error.to_string(),
            })?;
        if !value.is_object() {
            return Err(ScimError::InvalidResponse {
                context: "GET /Users/{id}".into(),
                message: "the account is not a JSON object".into(),
            });
        }
        let version = answer.etag.or_else(|| {
            value
                .pointer("/meta/version")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        Ok((value, version))
    }

    /// `PUT /Users/{id}` with the full document, conditional on `if_match` (the version read)
    /// when given; returns the account as the server answered it, when it did.
    ///
    /// # Errors
    /// [`ScimError::NotFound`] when the account is gone, [`ScimError::PreconditionFailed`] when
    /// it changed since it was read, or any other [`ScimError`].
    pub async fn replace<D: Serialize + ?Sized>(
        &self,
        id: &str,
        document: &D,
        if_match: Option<&str>,
    ) -> Result<Option<TargetUser>, ScimError> {
        let body = encode(document, "PUT /Users/{id}")?;
        let headers: Vec<(reqwest::header::HeaderName, String)> = if_match
            .map(|version| (reqwest::header::IF_MATCH, version.to_owned()))
            .into_iter()
            .collect();
        let answer = self
            .send_with(Method::PUT, &user_path(id), &[], &headers, Some(body))
            .await?;
        Ok(self.answered_user(&answer.body))
    }

    /// `PATCH /Users/{id}`; a 200 with a body and a 204 without are both success. Returns the
    /// account as the server answered it, when it did.
    ///
    /// # Errors
    /// [`ScimError::NotFound`] when the account is gone, or any other [`ScimError`].
    pub async fn patch(&self, id: &str, body: &Value) -> Result<Option<TargetUser>, ScimError> {
        let body = encode(body, "PATCH /Users/{id}")?;
        let answer = self
            .send(Method::PATCH, &user_path(id), &[], Some(body))
            .await?;
        Ok(self.answered_user(&answer.body))
    }

    /// The account in a write's answer, when the body holds one.
    fn answered_user(&self, body: &[u8]) -> Option<TargetUser> {
        if body.is_empty() {
            return None;
        }
        let value: Value = serde_json::from_slice(body).ok()?;
        wire::parse_user(&value, &self.extension_schema).ok()
    }

    /// `DELETE /Users/{id}`.
    ///
    /// # Errors
    /// [`ScimError::NotFound`] when the account is gone, or any other [`ScimError`].
    pub async fn delete(&self, id: &str) -> Result<(), ScimError> {
        self.send(Method::DELETE, &user_path(id), &[], None)
            .await
            .map(drop)
    }

    /// `GET /Users?filter=userName eq "…"`: the account with that `userName` (any case).
    ///
    /// # Errors
    /// Any [`ScimError`].
    pub async fn find_by_user_name(
        &self,
        user_name: &str,
    ) -> Result<Option<TargetUser>, ScimError> {
        let filter = format!(
            "userName eq \"{}\"",
            user_name.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let answer = self
            .send(Method::GET, "/Users", &[("filter", filter.as_str())], None)
            .await?;
        let page = self.parse_list(&answer.body, "GET /Users?filter=userName")?;
        let wanted = crate::model::fold_user_name(user_name);
        Ok(page
            .users
            .into_iter()
            .find(|user| crate::model::fold_user_name(&user.user_name) == wanted))
    }

    /// One page of `GET /Users` (`startIndex` is 1-based).
    ///
    /// # Errors
    /// Any [`ScimError`].
    pub async fn list_users(
        &self,
        start_index: usize,
        count: usize,
    ) -> Result<UserPage, ScimError> {
        let start = start_index.to_string();
        let count = count.to_string();
        let answer = self
            .send(
                Method::GET,
                "/Users",
                &[("startIndex", start.as_str()), ("count", count.as_str())],
                None,
            )
            .await?;
        self.parse_list(&answer.body, "GET /Users")
    }

    /// Every account, through paged `GET /Users` (`startIndex`, `count`): the first page tells
    /// the total and the server's real page size, the rest are fetched `max_in_flight` at a
    /// time through the limiter. Each account goes through `compact` as its page arrives, so
    /// that the caller can drop what it will not need before the next page.
    ///
    /// # Errors
    /// Any [`ScimError`]; [`ScimError::InvalidResponse`] when the pages do not add up to the
    /// total (the list changed while it was read, or the server pages inconsistently).
    pub async fn read_all(
        &self,
        page_size: usize,
        max_in_flight: usize,
        compact: &(dyn Fn(TargetUser) -> TargetUser + Sync),
    ) -> Result<Vec<TargetUser>, ScimError> {
        use futures::StreamExt;
        let first = self.list_users(1, page_size).await?;
        let total = first.total_results;
        let step = first.users.len();
        // Sized once from the first page's total (bounded: the number is the server's word).
        let mut users: Vec<TargetUser> = Vec::with_capacity(total.min(2_000_000));
        users.extend(first.users.into_iter().map(compact));
        if step > 0 && users.len() < total {
            let starts: Vec<usize> = (1 + step..=total).step_by(step).collect();
            // Each page is compacted as soon as it is parsed, not when its turn comes in the
            // ordered buffer, so at most `max_in_flight` pages are ever held whole.
            let mut pages = futures::stream::iter(starts)
                .map(|start| async move {
                    self.list_users(start, step).await.map(|page| {
                        page.users
                            .into_iter()
                            .map(compact)
                            .collect::<Vec<TargetUser>>()
                    })
                })
                .buffered(max_in_flight.clamp(1, READ_BACK_PAGES_IN_FLIGHT));
            while let Some(page) = pages.next().await {
                users.extend(page?);
            }
        }
        let mut seen = std::collections::HashSet::with_capacity(users.len());
        let repeated: Vec<usize> = users
            .iter()
            .enumerate()
            .filter(|(_, user)| !seen.insert(user.id.as_str()))
            .map(|(position, _)| position)
            .collect();
        drop(seen);
        for position in repeated.into_iter().rev() {
            users.remove(position);
        }
        if users.len() != total {
            return Err(ScimError::InvalidResponse {
                context: "GET /Users (read-back)".into(),
                message: format!(
                    "the pages hold {} accounts but totalResults says {total}; the list changed while it was read, or the server pages inconsistently",
                    users.len()
                ),
            });
        }
        Ok(users)
    }

    /// `GET {path}` as JSON, or `None` on 404 (for `/ServiceProviderConfig` and `/Schemas`).
    ///
    /// # Errors
    /// Any [`ScimError`] but 404.
    pub async fn get_optional(&self, path: &str) -> Result<Option<Value>, ScimError> {
        match self.send(Method::GET, path, &[], None).await {
            Ok(answer) => serde_json::from_slice(&answer.body)
                .map(Some)
                .map_err(|error| ScimError::InvalidResponse {
                    context: format!("GET {path}"),
                    message: error.to_string(),
                }),
            Err(ScimError::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn parse_list(&self, body: &[u8], context: &str) -> Result<UserPage, ScimError> {
        let invalid = |message: String| ScimError::InvalidResponse {
            context: context.to_owned(),
            message,
        };
        let mut value: Value =
            serde_json::from_slice(body).map_err(|error| invalid(error.to_string()))?;
        let total_results = value
            .get("totalResults")
            .and_then(Value::as_u64)
            .ok_or_else(|| invalid("the list response has no totalResults".into()))?;
        let resources = match value.get_mut("Resources").map(Value::take) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(_) => return Err(invalid("Resources is not an array".into())),
        };
        let users = resources
            .iter()
            .map(|item| wire::parse_user(item, &self.extension_schema).map_err(invalid))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(UserPage {
            users,
            total_results: usize::try_from(total_results).unwrap_or(usize::MAX),
        })
    }

    /// Sends one request through the limiter with retries; returns a 2xx answer.
    /// `body` is the encoded JSON; a retry sends the same bytes again without copying them.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<Bytes>,
    ) -> Result<Answer, ScimError> {
        self.send_with(method, path, query, &[], body).await
    }

    /// [`ScimClient::send`] with extra request headers (`If-Match`).
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(reqwest::header::HeaderName, String)],
        body: Option<Bytes>,
    ) -> Result<Answer, ScimError> {
        let url = if path == "/Users" {
            self.users_url.clone()
        } else {
            let text = format!("{}{}", self.base_url, path);
            Url::parse(&text).map_err(|error| ScimError::Transport {
                url: text.clone(),
                message: error.to_string(),
            })?
        };
        let mut attempts = 0u32;
        let outcome = retry::retry(
            &self.backoff,
            || {
                attempts += 1;
                self.attempt(&method, &url, path, query, headers, body.clone(), attempts)
            },
            |retry_no, delay, error: &ScimError| {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                retry::log_retry("SCIM", &method, path, retry_no, delay, error);
            },
        )
        .await;
        outcome.map_err(|error| match error {
            ScimError::Unavailable { status, detail, .. } => ScimError::Unavailable {
                status,
                attempts,
                detail,
            },
            other => other,
        })
    }

    #[allow(clippy::too_many_arguments)] // The parts of one request, as `send_with` got them.
    async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        path: &str,
        query: &[(&str, &str)],
        headers: &[(reqwest::header::HeaderName, String)],
        body: Option<Bytes>,
        attempt: u32,
    ) -> Result<Answer, Attempt<ScimError>> {
        let _permit = self.limiter.acquire().await;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header(ACCEPT, ACCEPT_JSON);
        if !query.is_empty() {
            request = request.query(query);
        }
        for (name, value) in headers {
            request = request.header(name, value);
        }
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, SCIM_JSON).body(body);
        }
        let transport = |error: reqwest::Error| Attempt::Retry {
            error: ScimError::Transport {
                url: format!("{}{}", self.base_url, path),
                message: describe_transport(&error),
            },
            after: None,
        };
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let verdict = classify_status(status, response.headers());
        let etag = response
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        // An error answer comes back scrubbed: it may quote the request, token included.
        let bytes = crate::net::redact::read_body(response)
            .await
            .map_err(transport)?;
        if status.is_success() {
            return Ok(Answer { body: bytes, etag });
        }
        let detail = wire::error_detail(&bytes).unwrap_or_else(|| body_excerpt(&bytes, status));
        let error = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ScimError::Unauthorized {
                status: status.as_u16(),
                detail,
            },
            StatusCode::NOT_FOUND => ScimError::NotFound { detail },
            StatusCode::CONFLICT => ScimError::Conflict { detail },
            StatusCode::PRECONDITION_FAILED => ScimError::PreconditionFailed { detail },
            _ if matches!(verdict, Verdict::RetryAfter(_)) => {
                // A wait longer than one may last fails the run at once, naming its end.
                if let Verdict::RetryAfter(Some(wait)) = verdict
                    && let Some(why) = retry::wait_too_long(wait, SystemTime::now())
                {
                    return Err(Attempt::Fatal(ScimError::Unavailable {
                        status: status.as_u16(),
                        attempts: attempt,
                        detail: format!("{detail}; {why}"),
                    }));
                }
                ScimError::Unavailable {
                    status: status.as_u16(),
                    attempts: attempt,
                    detail,
                }
            }
            _ if status.is_server_error() => ScimError::Unavailable {
                status: status.as_u16(),
                attempts: attempt,
                detail,
            },
            _ => ScimError::Rejected {
                status: status.as_u16(),
                detail,
            },
        };
        Err(Attempt::from_verdict(verdict, error))
    }
}

/// A 2xx answer: its body and its `ETag` header, if any.
struct Answer {
    body: Bytes,
    etag: Option<String>,
}

/// The `Authorization` header for `token`, marked sensitive (never printed by `Debug`).
fn authorization(token: &Secret) -> HeaderValue {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid-token-characters"));
    value.set_sensitive(true);
    value
}

/// Encodes a request body as JSON.
fn encode<D: Serialize + ?Sized>(document: &D, context: &str) -> Result<Bytes, ScimError> {
    // A user's document is a few hundred bytes: one allocation instead of growing from 128.
    let mut body = Vec::with_capacity(1024);
    serde_json::to_writer(&mut body, document)
        .map(|()| Bytes::from(body))
        .map_err(|error| ScimError::InvalidResponse {
            context: context.to_owned(),
            message: format!("the request body cannot be encoded: {error}"),
        })
}

fn classify_status(status: StatusCode, headers: &reqwest::header::HeaderMap) -> Verdict {
    retry::classify_status(status, headers, SystemTime::now())
}

fn user_path(id: &str) -> String {
    format!("/Users/{}", urlencode_segment(id))
}

fn urlencode_segment(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn body_excerpt(body: &[u8], status: StatusCode) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no explanation given")
            .to_owned()
    } else {
        let excerpt: String = text.chars().take(200).collect();
        format!("no SCIM error detail; body starts {excerpt:?}")
    }
}
