//! Authentication to the Okta Management API: an API token (`Authorization: SSWS …`) or an OAuth
//! 2.0 service app (client credentials with `private_key_jwt`), DPoP-bound when the org asks for
//! it. [`OktaAuth::headers`] gives the headers for one API request; for a service app it gets the
//! access token once, caches it until a minute before it expires, and makes concurrent callers
//! share one token request.
//!
//! DPoP (RFC 9449) is switched on by the token endpoint, never by configuration: when it answers
//! `use_dpop_nonce` (with a `dpop-nonce` header) or `invalid_dpop_proof`, the token request is
//! sent again with a proof signed by an ephemeral P-256 key made once per process, and a
//! `token_type: "DPoP"` answer makes every API call carry `Authorization: DPoP …` and a fresh
//! proof bound to the token (`ath`).
//!
//! Neither the private key, the client assertion, the proofs nor the tokens appear in any
//! message, log or `Debug` output.

use crate::net::text::{pem_blocks, unix_seconds};
use std::fmt;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;
use url::Url;

use super::client::{RateLimit, display_url};
use crate::config::Secret;
use crate::net::text::describe_transport;

/// The configuration key of the API token, named by messages about it.
pub const TOKEN_KEY: &str = "source.okta.token";
/// The configuration key of the service app's private key, named by messages about it.
pub const PRIVATE_KEY_KEY: &str = "source.okta.private_key_file";

/// The `DPoP` request header.
const DPOP: HeaderName = HeaderName::from_static("dpop");
/// The `dpop-nonce` response header.
const DPOP_NONCE: &str = "dpop-nonce";
/// How long a client assertion is valid (Okta allows at most an hour).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(300);
/// A cached token is renewed this long before it expires (or at half its life, if shorter).
const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(60);
/// Okta's service-app tokens live one hour; assumed when `expires_in` is missing.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Token requests per token fetch at most: plain, DPoP without nonce, DPoP with nonce, and
/// one more for a nonce that rotates meanwhile.
const MAX_TOKEN_ROUNDS: usize = 4;

/// How requests to Okta are authenticated.
#[derive(Debug)]
pub enum OktaAuth {
    /// An API token, sent as `Authorization: SSWS <token>`.
    ApiToken(Secret),
    /// An OAuth 2.0 service app (client credentials with `private_key_jwt`).
    ServiceApp(Box<ServiceApp>),
}

/// An OAuth 2.0 service app: its client id, signing key and scopes, and the cached token.
pub struct ServiceApp {
    /// The app's client id (`0oa…`), the client assertion's `iss` and `sub`.
    client_id: String,
    /// `{org}/oauth2/v1/token`, the assertion's `aud`.
    token_url: Url,
    /// The scopes asked for.
    scopes: Vec<String>,
    /// The key that signs client assertions.
    key: ClientKey,
    /// The cached token and the DPoP state. A std mutex: it is held only to copy values in or
    /// out, never across an `.await`.
    state: Mutex<TokenState>,
    /// Held while a token request is in flight, so that concurrent callers wait for it and
    /// share its token instead of each asking for one.
    fetching: tokio::sync::Mutex<()>,
}

/// Why Okta authentication failed; never contains a key, an assertion or a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OktaAuthError {
    /// A configured credential cannot be used (a private key that is not a usable PEM key, a
    /// token with characters that cannot be sent); fix the configuration.
    #[error("{key}: {message}")]
    InvalidCredential {
        /// The configuration key, `source.okta.private_key_file` or `source.okta.token`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The token endpoint refused the service app (400/401/403); fix the app in Okta.
    #[error(
        "Okta refused an access token to the service app {client_id} at {url} ({status} {error}{}); {hint}",
        describe_oauth(.description)
    )]
    Refused {
        /// The app's client id.
        client_id: String,
        /// The token endpoint (path).
        url: String,
        /// The HTTP status.
        status: u16,
        /// The OAuth `error` code, for example `invalid_client`.
        error: String,
        /// The OAuth `error_description`, if any.
        description: String,
        /// What to check.
        hint: String,
    },
    /// The token endpoint answered 429 or 5xx; worth retrying.
    #[error("Okta's token endpoint {url} is unavailable ({status}): {detail}")]
    Unavailable {
        /// The token endpoint (path).
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's explanation.
        detail: String,
        /// How long Okta asked us to wait (`X-Rate-Limit-Reset` on a 429), if it said.
        retry_after: Option<Duration>,
    },
    /// The token endpoint could not be reached; worth retrying.
    #[error("cannot reach Okta's token endpoint {url}: {message}")]
    Transport {
        /// The token endpoint (path).
        url: String,
        /// What failed.
        message: String,
    },
    /// The token endpoint's success answer cannot be read.
    #[error("Okta's token endpoint {url} sent an answer that cannot be read: {message}")]
    InvalidResponse {
        /// The token endpoint (path).
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// Signing a client assertion or a DPoP proof failed (the crypto library refused).
    #[error("cannot sign the {what} for the service app: {message}")]
    Signing {
        /// `client assertion` or `DPoP proof`.
        what: &'static str,
        /// What failed.
        message: String,
    },
}

/// The service app's signing key.
enum ClientKey {
    /// RSA, signs RS256.
    Rsa(RsaKeyPair),
    /// EC P-256, signs ES256.
    Ec(EcdsaKeyPair),
}

/// What the service app remembers between requests.
#[derive(Default)]
struct TokenState {
    /// The cached access token.
    token: Option<AccessToken>,
    /// Whether the token endpoint wants DPoP proofs (learnt from its answers).
    dpop: bool,
    /// The token endpoint's latest `dpop-nonce`.
    token_nonce: Option<String>,
    /// The resource server's latest `dpop-nonce`.
    resource_nonce: Option<String>,
}

/// An access token and when to renew it.
#[derive(Clone)]
struct AccessToken {
    /// The token.
    value: Secret,
    /// How it is presented.
    kind: TokenKind,
    /// When it counts as expired (a little before it really does).
    renew_at: Instant,
}

/// How an access token is presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKind {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// `Authorization: DPoP <token>` plus a `DPoP` proof.
    Dpop,
}

/// The process's ephemeral DPoP key and its public JWK.
struct DpopKey {
    /// The P-256 key pair.
    pair: EcdsaKeyPair,
    /// `{"kty":"EC","crv":"P-256","x":…,"y":…}`.
    jwk: Value,
}

/// The DPoP key, made on first use and kept for the life of the process.
static DPOP_KEY: OnceLock<DpopKey> = OnceLock::new();

impl OktaAuth {
    /// Authenticates with an API token (`Authorization: SSWS <token>`).
    #[must_use]
    pub fn api_token(token: Secret) -> OktaAuth {
        crate::net::redact::register_secret(token.expose());
        OktaAuth::ApiToken(token)
    }

    /// Authenticates as an OAuth service app of the org at `org_url`, signing client assertions
    /// with `private_key_pem`: RSA (PKCS#1 `RSA PRIVATE KEY` or PKCS#8 `PRIVATE KEY`, RS256) or EC
    /// P-256 (PKCS#8 or SEC1 `EC PRIVATE KEY`, ES256).
    ///
    /// # Errors
    /// [`OktaAuthError::InvalidCredential`] naming `source.okta.private_key_file` when the PEM
    /// holds no usable private key.
    pub fn service_app(
        org_url: &Url,
        client_id: String,
        private_key_pem: Secret,
        scopes: Vec<String>,
    ) -> Result<OktaAuth, OktaAuthError> {
        crate::net::redact::register_secret(private_key_pem.expose());
        let key = ClientKey::from_pem(private_key_pem.expose())?;
        let token_url =
            org_url
                .join("/oauth2/v1/token")
                .map_err(|error| OktaAuthError::InvalidCredential {
                    key: "source.okta.org_url",
                    message: format!("cannot build the token endpoint's URL: {error}"),
                })?;
        Ok(OktaAuth::ServiceApp(Box::new(ServiceApp {
            client_id,
            token_url,
            scopes,
            key,
            state: Mutex::new(TokenState::default()),
            fetching: tokio::sync::Mutex::new(()),
        })))
    }

    /// Names the credential in use, for messages: `source.okta.token` or
    /// `the service app <client_id>`.
    #[must_use]
    pub fn credential(&self) -> String {
        match self {
            OktaAuth::ApiToken(_) => TOKEN_KEY.to_owned(),
            OktaAuth::ServiceApp(app) => format!("the service app {}", app.client_id),
        }
    }

    /// Headers for one API request (`Authorization`, and `DPoP` when the token is DPoP-bound).
    ///
    /// For a service app this gets the access token first, or takes the cached one; concurrent
    /// callers share one token request.
    ///
    /// # Errors
    /// [`OktaAuthError`]: the token endpoint refused, failed or could not be reached, or a
    /// credential cannot be used. [`OktaAuthError::is_transient`] tells whether to retry.
    pub async fn headers(
        &self,
        http: &reqwest::Client,
        method: &Method,
        url: &Url,
    ) -> Result<HeaderMap, OktaAuthError> {
        let mut headers = HeaderMap::new();
        match self {
            OktaAuth::ApiToken(token) => {
                let value = sensitive(&format!("SSWS {}", token.expose())).ok_or(
                    OktaAuthError::InvalidCredential {
                        key: TOKEN_KEY,
                        message: "the token holds characters that cannot be sent in an HTTP \
                                  header"
                            .to_owned(),
                    },
                )?;
                headers.insert(AUTHORIZATION, value);
            }
            OktaAuth::ServiceApp(app) => {
                let token = app.access_token(http).await?;
                match token.kind {
                    TokenKind::Bearer => {
                        headers.insert(AUTHORIZATION, app.authorization("Bearer", &token)?);
                    }
                    TokenKind::Dpop => {
                        headers.insert(AUTHORIZATION, app.authorization("DPoP", &token)?);
                        let nonce = app.state().resource_nonce.clone();
                        let proof = dpop_key()?.proof(
                            method,
                            url,
                            nonce.as_deref(),
                            Some(token.value.expose()),
                        )?;
                        headers.insert(DPOP, proof);
                    }
                }
            }
        }
        Ok(headers)
    }

    /// Drops the cached token, so that the next request gets a new one (called once on a 401).
    pub fn invalidate(&self) {
        if let OktaAuth::ServiceApp(app) = self {
            app.state().token = None;
        }
    }

    /// Records a `dpop-nonce` that the resource server sent (a 401 with `WWW-Authenticate: DPoP
    /// error="use_dpop_nonce"`); later proofs for API calls carry it.
    pub fn set_resource_nonce(&self, nonce: String) {
        if let OktaAuth::ServiceApp(app) = self {
            app.state().resource_nonce = Some(nonce);
        }
    }

    /// Whether API requests currently carry DPoP proofs (the token endpoint asked for them).
    #[must_use]
    pub fn uses_dpop(&self) -> bool {
        match self {
            OktaAuth::ApiToken(_) => false,
            OktaAuth::ServiceApp(app) => app.state().dpop,
        }
    }
}

impl OktaAuthError {
    /// Whether a later attempt may succeed (429, 5xx, or the endpoint could not be reached).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            OktaAuthError::Unavailable { .. } | OktaAuthError::Transport { .. }
        )
    }

    /// How long the token endpoint asked us to wait before trying again, if it said.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            OktaAuthError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl fmt::Debug for ServiceApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match self.key {
            ClientKey::Rsa(_) => "RSA (RS256)",
            ClientKey::Ec(_) => "EC P-256 (ES256)",
        };
        f.debug_struct("ServiceApp")
            .field("client_id", &self.client_id)
            .field("token_url", &self.token_url.as_str())
            .field("scopes", &self.scopes)
            .field("key", &key)
            .finish_non_exhaustive()
    }
}

impl ServiceApp {
    /// Locks the token state. A panic while it was held cannot leave it inconsistent (every
    /// update is a single assignment), so a poisoned lock is used as it is.
    fn state(&self) -> MutexGuard<'_, TokenState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached token if it is still fresh.
    fn fresh_token(&self) -> Option<AccessToken> {
        let state = self.state();
        state
            .token
            .as_ref()
            .filter(|token| Instant::now() < token.renew_at)
            .cloned()
    }

    /// The cached token, or a new one; concurrent callers share one token request.
    async fn access_token(&self, http: &reqwest::Client) -> Result<AccessToken, OktaAuthError> {
        if let Some(token) = self.fresh_token() {
            return Ok(token);
        }
        let _fetching = self.fetching.lock().await;
        // Another caller may have fetched a token while this one waited.
        if let Some(token) = self.fresh_token() {
            return Ok(token);
        }
        let token = self.request_token(http).await?;
        self.state().token = Some(token.clone());
        Ok(token)
    }

    /// `Authorization: <scheme> <token>`, marked sensitive.
    fn authorization(
        &self,
        scheme: &str,
        token: &AccessToken,
    ) -> Result<HeaderValue, OktaAuthError> {
        sensitive(&format!("{scheme} {}", token.value.expose())).ok_or_else(|| {
            OktaAuthError::InvalidResponse {
                url: display_url(&self.token_url),
                message: "the access token holds characters that cannot be sent in an HTTP \
                          header"
                    .to_owned(),
            }
        })
    }

    /// Asks the token endpoint for a token, going through the DPoP nonce round when it asks.
    async fn request_token(&self, http: &reqwest::Client) -> Result<AccessToken, OktaAuthError> {
        let url = display_url(&self.token_url);
        let (mut dpop, mut nonce) = {
            let state = self.state();
            (state.dpop, state.token_nonce.clone())
        };
        let mut last_error = None;
        for _round in 0..MAX_TOKEN_ROUNDS {
            // Every request gets a new assertion: Okta refuses a reused `jti`.
            let assertion = self.client_assertion()?;
            let body = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "client_credentials")
                .append_pair("scope", &self.scopes.join(" "))
                .append_pair(
                    "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                )
                .append_pair("client_assertion", &assertion)
                .finish();
            let mut request = http
                .post(self.token_url.clone())
                .header(ACCEPT, "application/json")
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body);
            if dpop {
                let proof =
                    dpop_key()?.proof(&Method::POST, &self.token_url, nonce.as_deref(), None)?;
                request = request.header(DPOP, proof);
            }
            let transport = |error: reqwest::Error| OktaAuthError::Transport {
                url: url.clone(),
                message: describe_transport(&error),
            };
            let response = request.send().await.map_err(transport)?;
            let status = response.status();
            let headers = response.headers().clone();
            // An error answer comes back scrubbed: it may quote the assertion or the proof.
            let body = crate::net::redact::read_body(response)
                .await
                .map_err(transport)?;
            let sent_nonce = headers
                .get(DPOP_NONCE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            if let Some(sent_nonce) = &sent_nonce {
                self.state().token_nonce = Some(sent_nonce.clone());
            }
            if status.is_success() {
                return self.parse_token(&body);
            }

            let oauth = OAuthError::parse(&body, status);
            let switch_to_dpop = match oauth.error.as_str() {
                // A nonce we have not tried yet (or proofs we have not sent yet).
                "use_dpop_nonce" => sent_nonce.is_some() && (!dpop || sent_nonce != nonce),
                "invalid_dpop_proof" => !dpop,
                _ => false,
            };
            if switch_to_dpop {
                tracing::debug!(
                    message = "Okta's token endpoint asks for DPoP; sending a proof.",
                    client_id = %self.client_id,
                    error = %oauth.error
                );
                dpop = true;
                if sent_nonce.is_some() {
                    nonce = sent_nonce;
                }
                self.state().dpop = true;
                last_error = Some(self.refused(status, oauth));
                continue;
            }
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                let retry_after = (status == StatusCode::TOO_MANY_REQUESTS)
                    .then(|| {
                        RateLimit::from_headers(&headers).until_reset(&headers, SystemTime::now())
                    })
                    .flatten();
                return Err(OktaAuthError::Unavailable {
                    url,
                    status: status.as_u16(),
                    detail: oauth.summary(),
                    retry_after,
                });
            }
            return Err(self.refused(status, oauth));
        }
        Err(
            last_error.unwrap_or_else(|| OktaAuthError::InvalidResponse {
                url,
                message: "the DPoP nonce round did not settle".to_owned(),
            }),
        )
    }

    /// Reads a 2xx answer of the token endpoint.
    fn parse_token(&self, body: &[u8]) -> Result<AccessToken, OktaAuthError> {
        let invalid = |message: &str| OktaAuthError::InvalidResponse {
            url: display_url(&self.token_url),
            message: message.to_owned(),
        };
        let value: Value =
            serde_json::from_slice(body).map_err(|_| invalid("the answer is not a JSON object"))?;
        let access_token = value
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| invalid("the answer has no access_token"))?;
        let kind = match value.get("token_type").and_then(Value::as_str) {
            Some(kind) if kind.eq_ignore_ascii_case("DPoP") => TokenKind::Dpop,
            Some(kind) if kind.eq_ignore_ascii_case("Bearer") => TokenKind::Bearer,
            Some(_) => return Err(invalid("the token_type is neither Bearer nor DPoP")),
            None => return Err(invalid("the answer has no token_type")),
        };
        let lifetime = value
            .get("expires_in")
            .and_then(Value::as_u64)
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        let renew_at =
            Instant::now() + lifetime.saturating_sub(RENEW_BEFORE_EXPIRY.min(lifetime / 2));
        if kind == TokenKind::Dpop {
            self.state().dpop = true;
        }
        tracing::debug!(
            message = "Got an Okta access token.",
            client_id = %self.client_id,
            token_type = ?kind,
            expires_in_s = lifetime.as_secs()
        );
        crate::net::redact::register_issued(access_token);
        Ok(AccessToken {
            value: Secret::new(access_token),
            kind,
            renew_at,
        })
    }

    /// The error for a refused token request, with what to check.
    fn refused(&self, status: StatusCode, oauth: OAuthError) -> OktaAuthError {
        let scopes = if self.scopes.is_empty() {
            "(none configured)".to_owned()
        } else {
            self.scopes.join(", ")
        };
        let general = format!(
            "check that the app's public key is registered in Okta (Client authentication: Public \
             key / Private key) and matches {PRIVATE_KEY_KEY}, that the scopes {scopes} are granted \
             to the app (Okta API Scopes tab), and that the app has an admin role assigned"
        );
        let hint = match oauth.error.as_str() {
            "invalid_client" => format!("check client_id and the key: {general}"),
            "invalid_scope" => format!(
                "check that every scope in source.okta.scopes ({scopes}) is granted to the app; {general}"
            ),
            "use_dpop_nonce" | "invalid_dpop_proof" => format!(
                "the DPoP handshake failed; check that the app's DPoP setting matches; {general}"
            ),
            _ => general,
        };
        OktaAuthError::Refused {
            client_id: self.client_id.clone(),
            url: display_url(&self.token_url),
            status: status.as_u16(),
            error: oauth.error,
            description: oauth.description,
            hint,
        }
    }

    /// A new client assertion (`private_key_jwt`): aud = token URL, iss = sub = client id, a
    /// five-minute life and a random `jti`.
    fn client_assertion(&self) -> Result<String, OktaAuthError> {
        let iat = unix_seconds();
        let claims = json!({
            "aud": self.token_url.as_str(),
            "iss": self.client_id,
            "sub": self.client_id,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME.as_secs(),
            "jti": random_id(),
        });
        let alg = match self.key {
            ClientKey::Rsa(_) => "RS256",
            ClientKey::Ec(_) => "ES256",
        };
        let header = json!({ "alg": alg, "typ": "JWT" });
        let assertion = sign_jws(&header, &claims, "client assertion", |input| {
            self.key.sign(input)
        })?;
        crate::net::redact::register_issued(&assertion);
        Ok(assertion)
    }
}

impl ClientKey {
    /// Reads the first private key in a PEM file.
    fn from_pem(pem: &str) -> Result<ClientKey, OktaAuthError> {
        let invalid = |message: String| OktaAuthError::InvalidCredential {
            key: PRIVATE_KEY_KEY,
            message,
        };
        let blocks = pem_blocks(pem);
        if blocks.is_empty() {
            return Err(invalid(
                "not a PEM file (expected a -----BEGIN PRIVATE KEY----- block)".to_owned(),
            ));
        }
        let Some((label, der)) = blocks
            .iter()
            .find(|(label, _)| label.ends_with("PRIVATE KEY"))
        else {
            let labels: Vec<&str> = blocks.iter().map(|(label, _)| label.as_str()).collect();
            return Err(invalid(format!(
                "the PEM holds no private key (found {}); give the service app's private key",
                labels.join(", ")
            )));
        };
        let der = der
            .as_ref()
            .map_err(|()| invalid(format!("the {label} block is not valid base64")))?;
        match label.as_str() {
            "RSA PRIVATE KEY" => RsaKeyPair::from_der(der)
                .map(ClientKey::Rsa)
                .map_err(|error| {
                    invalid(format!(
                        "not a usable RSA private key ({error}); Okta needs 2048 bits or more"
                    ))
                }),
            "EC PRIVATE KEY" => EcdsaKeyPair::from_private_key_der(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                der,
            )
            .map(ClientKey::Ec)
            .map_err(|error| {
                invalid(format!(
                    "not a usable EC private key ({error}); ES256 needs a P-256 (prime256v1) key"
                ))
            }),
            "PRIVATE KEY" => {
                if let Ok(pair) = RsaKeyPair::from_pkcs8(der) {
                    Ok(ClientKey::Rsa(pair))
                } else if let Ok(pair) =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                {
                    Ok(ClientKey::Ec(pair))
                } else {
                    Err(invalid(
                        "the PKCS#8 key is neither an RSA key (2048 bits or more) nor an EC P-256 \
                         key; Okta service apps sign with RS256 or ES256"
                            .to_owned(),
                    ))
                }
            }
            "ENCRYPTED PRIVATE KEY" => Err(invalid(
                "the private key is encrypted; decrypt it (openssl pkcs8 -in KEY -out PLAIN) \
                 and protect the file instead"
                    .to_owned(),
            )),
            other => Err(invalid(format!(
                "unsupported key type {other:?}; give an RSA or EC P-256 private key"
            ))),
        }
    }

    /// Signs `input` (RS256 or ES256).
    fn sign(&self, input: &[u8]) -> Result<Vec<u8>, String> {
        let rng = SystemRandom::new();
        match self {
            ClientKey::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, input, &mut signature)
                    .map_err(|error| error.to_string())?;
                Ok(signature)
            }
            ClientKey::Ec(pair) => pair
                .sign(&rng, input)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|error| error.to_string()),
        }
    }
}

impl DpopKey {
    /// Makes a new P-256 key and its JWK.
    fn generate() -> Result<DpopKey, OktaAuthError> {
        let signing = |message: String| OktaAuthError::Signing {
            what: "DPoP proof",
            message,
        };
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|error| signing(format!("cannot make the DPoP key: {error}")))?;
        // The public key is the uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key().as_ref();
        let (x, y) = match point {
            [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
            _ => return Err(signing("unexpected public key encoding".to_owned())),
        };
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
        });
        Ok(DpopKey { pair, jwk })
    }

    /// A DPoP proof for one request: `htm`, `htu` (the URL without query and fragment), `iat`,
    /// `jti`, and `nonce` and `ath` (base64url SHA-256 of the access token) when given.
    fn proof(
        &self,
        method: &Method,
        url: &Url,
        nonce: Option<&str>,
        access_token: Option<&str>,
    ) -> Result<HeaderValue, OktaAuthError> {
        let mut htu = url.clone();
        htu.set_query(None);
        htu.set_fragment(None);
        let mut claims = json!({
            "htm": method.as_str(),
            "htu": htu.as_str(),
            "iat": unix_seconds(),
            "jti": random_id(),
        });
        if let Some(nonce) = nonce {
            claims["nonce"] = json!(nonce);
        }
        if let Some(token) = access_token {
            let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
            claims["ath"] = json!(URL_SAFE_NO_PAD.encode(hash.as_ref()));
        }
        let header = json!({ "typ": "dpop+jwt", "alg": "ES256", "jwk": self.jwk });
        let proof = sign_jws(&header, &claims, "DPoP proof", |input| {
            self.pair
                .sign(&SystemRandom::new(), input)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|error| error.to_string())
        })?;
        sensitive(&proof).ok_or(OktaAuthError::Signing {
            what: "DPoP proof",
            message: "the proof is not a valid header value".to_owned(),
        })
    }
}

/// The process's DPoP key, made on first use.
fn dpop_key() -> Result<&'static DpopKey, OktaAuthError> {
    if let Some(key) = DPOP_KEY.get() {
        return Ok(key);
    }
    let key = DpopKey::generate()?;
    // If another thread won the race, its key is kept and this one dropped.
    Ok(DPOP_KEY.get_or_init(|| key))
}

/// An OAuth error answer (`error`, `error_description`), or what stands in for it.
struct OAuthError {
    /// The `error` code, or `http_<status>` when the body has none.
    error: String,
    /// The `error_description`, or the start of a non-OAuth body.
    description: String,
}

impl OAuthError {
    /// Reads an OAuth error body; falls back on Okta's `errorCode`/`errorSummary`.
    fn parse(body: &[u8], status: StatusCode) -> OAuthError {
        let value: Option<Value> = serde_json::from_slice(body).ok();
        let field = |name: &str| {
            value
                .as_ref()
                .and_then(|value| value.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let error = field("error")
            .or_else(|| field("errorCode"))
            .unwrap_or_else(|| format!("http_{}", status.as_u16()));
        let description = field("error_description")
            .or_else(|| field("errorSummary"))
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body);
                text.trim().chars().take(200).collect()
            });
        OAuthError { error, description }
    }

    /// `error: description`, for the transient-error detail.
    fn summary(&self) -> String {
        format!("{}{}", self.error, describe_oauth(&self.description))
    }
}

/// `: description`, or nothing when there is none.
fn describe_oauth(description: &str) -> String {
    if description.is_empty() {
        String::new()
    } else {
        format!(": {description}")
    }
}

/// Signs a compact JWS: base64url(header) . base64url(claims) . base64url(signature).
fn sign_jws(
    header: &Value,
    claims: &Value,
    what: &'static str,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, String>,
) -> Result<String, OktaAuthError> {
    let mut jws = URL_SAFE_NO_PAD.encode(header.to_string());
    jws.push('.');
    jws.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature =
        sign(jws.as_bytes()).map_err(|message| OktaAuthError::Signing { what, message })?;
    jws.push('.');
    jws.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(jws)
}

/// A header value marked sensitive (kept out of `Debug` output and HPACK tables), or `None` when
/// `text` holds characters that a header cannot carry.
fn sensitive(text: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(text).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// A random `jti`: 128 bits, base64url.
fn random_id() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests;
