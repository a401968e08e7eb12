//! Authentication to Microsoft Graph: the OAuth 2.0 client-credentials grant at the Microsoft
//! identity platform (`{login_url}/{tenant_id}/oauth2/v2.0/token`, scope `{graph_url}/.default`),
//! with a client secret or with a certificate. With a certificate, every token request carries a
//! new client assertion: a JWT signed PS256 with the certificate's private key, which names the
//! certificate by its thumbprints (`x5t#S256`, and the legacy SHA-1 `x5t`) so that Entra ID finds
//! it among the app registration's credentials.
//!
//! [`GraphAuth::bearer`] gives the access token for one request: it is fetched once, cached until
//! a minute before it expires, and concurrent callers share one token request. A refused token
//! request names the tenant, the client id, Entra ID's `AADSTS` code and what to check.
//!
//! The thumbprints are computed from the certificate's DER bytes (the PEM body), so no X.509
//! parser is needed; the one thing read from inside the certificate is whether it holds the
//! private key's public key, found as a byte string in the DER.
//!
//! Neither the secret, the private key, the client assertion nor the token appear in any
//! message, log or `Debug` output.

use crate::net::text::{pem_blocks, unix_seconds, with_colon};
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, SHA256, digest};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{KeyPair, RSA_PSS_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use tokio::time::Instant;
use url::Url;

use crate::config::Secret;
use crate::net::retry::{self, Verdict};
use crate::net::text::describe_transport;

/// The configuration key of the client secret, named by messages about it.
pub const CLIENT_SECRET_KEY: &str = "source.entra.client_secret";
/// The configuration key of the certificate, named by messages about it.
pub const CERTIFICATE_KEY: &str = "source.entra.certificate_file";
/// The configuration key of the certificate's private key, named by messages about it.
pub const PRIVATE_KEY_KEY: &str = "source.entra.private_key_file";
/// The application permissions the source needs, named by hints.
pub const READ_PERMISSIONS: &str = "User.Read.All and GroupMember.Read.All";

/// How long a client assertion is valid (Entra ID allows at most ten minutes after `nbf`).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);
/// A cached token is renewed this long before it expires (or at half its life, if shorter).
const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(60);
/// Entra ID's app tokens live 60 to 90 minutes; one hour is assumed when `expires_in` is missing.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// The `client_assertion_type` of a JWT client assertion (RFC 7523).
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How requests to Microsoft Graph are authenticated: an app registration's client credentials.
#[derive(Debug)]
pub enum GraphAuth {
    /// A client secret, sent with each token request.
    ClientSecret(Box<GraphApp<Secret>>),
    /// A certificate: each token request carries a new client assertion signed with its key.
    Certificate(Box<GraphApp<Certificate>>),
}

/// An app registration in one tenant, its credential `C`, and the cached access token.
pub struct GraphApp<C> {
    /// The directory (tenant) id, for messages.
    tenant_id: String,
    /// The application (client) id; the client assertion's `iss` and `sub`.
    client_id: String,
    /// `{login_url}/{tenant_id}/oauth2/v2.0/token`, the client assertion's `aud`.
    token_url: Url,
    /// `{graph_url}/.default`.
    scope: String,
    /// The client secret or the certificate.
    credential: C,
    /// The cached token. A std mutex: it is held only to copy the token in or out, never across
    /// an `.await`.
    cached: Mutex<Option<AccessToken>>,
    /// Held while a token request is in flight, so that concurrent callers wait for it and
    /// share its token instead of each asking for one.
    fetching: tokio::sync::Mutex<()>,
}

/// A certificate credential: the RSA key that signs client assertions and the certificate's
/// thumbprints.
pub struct Certificate {
    /// The certificate's private key.
    key: RsaKeyPair,
    /// base64url(SHA-256(certificate DER)), the assertion's `x5t#S256` header.
    x5t_s256: String,
    /// base64url(SHA-1(certificate DER)), the assertion's legacy `x5t` header.
    x5t: String,
    /// The SHA-1 thumbprint in upper-case hex, as the Entra admin center shows it.
    thumbprint: String,
}

/// Why authentication to Microsoft Graph failed; never contains a secret, a key, an assertion
/// or a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GraphAuthError {
    /// A configured credential cannot be used (a certificate or key that is not usable PEM, a
    /// key that does not belong to the certificate); fix the configuration.
    #[error("{key}: {message}")]
    InvalidCredential {
        /// The configuration key, `source.entra.certificate_file` or
        /// `source.entra.private_key_file`.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The token endpoint refused the app (a 4xx other than 429); fix the app registration or
    /// the configuration.
    #[error(
        "Microsoft Entra ID refused an access token to {who} ({status} {error}{}); {hint}",
        with_colon(.description)
    )]
    Refused {
        /// `tenant <tenant_id>, client <client_id>`.
        who: String,
        /// The HTTP status.
        status: u16,
        /// The OAuth `error` code, for example `invalid_client`.
        error: String,
        /// Entra ID's error code (`AADSTS7000215`), if it gave one.
        code: Option<String>,
        /// The first line of `error_description` (which starts with the `AADSTS` code), and
        /// the `correlation_id` for a support request.
        description: String,
        /// What to check.
        hint: String,
    },
    /// The token endpoint answered 429 or 5xx; worth retrying.
    #[error("Microsoft Entra ID's token endpoint {url} is unavailable ({status}){}", with_colon(.detail))]
    Unavailable {
        /// The token endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's explanation.
        detail: String,
        /// How long the endpoint asked us to wait (`Retry-After`), if it said.
        retry_after: Option<Duration>,
    },
    /// The token endpoint could not be reached; worth retrying.
    #[error("cannot reach Microsoft Entra ID's token endpoint {url}: {message}")]
    Transport {
        /// The token endpoint.
        url: String,
        /// What failed.
        message: String,
    },
    /// The token endpoint's success answer cannot be read.
    #[error(
        "Microsoft Entra ID's token endpoint {url} sent an answer that cannot be read: {message}"
    )]
    InvalidResponse {
        /// The token endpoint.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// Signing a client assertion failed (the crypto library refused).
    #[error("cannot sign the client assertion for {who}: {message}")]
    Signing {
        /// `tenant <tenant_id>, client <client_id>`.
        who: String,
        /// What failed.
        message: String,
    },
}

/// An access token and when to renew it.
#[derive(Clone)]
struct AccessToken {
    /// The token.
    value: Secret,
    /// When it counts as expired (a little before it really does).
    renew_at: Instant,
}

/// What a credential adds to a token request, and what to check when it is refused.
trait Credential {
    /// Adds the credential's fields (`client_secret`, or `client_assertion_type` and
    /// `client_assertion`) to the token request's form.
    fn add_to_form(
        &self,
        form: &mut url::form_urlencoded::Serializer<'_, String>,
        app: &AppIdentity<'_>,
    ) -> Result<(), GraphAuthError>;

    /// What to check when the token endpoint refuses with an error code this credential knows.
    fn hint_for(&self, code: Option<u64>) -> Option<String>;

    /// What to check when nothing more specific is known.
    fn general_hint(&self) -> String;

    /// `text` with any trace of the credential removed (the token endpoint never echoes a
    /// secret, but a message must not depend on that): the shared redaction step knows the
    /// client secret, the private key and every assertion made, and removes JWTs by shape.
    fn redact(&self, text: String) -> String {
        crate::net::redact::scrub(&text).into_owned()
    }
}

/// The identity of the app, as a credential needs it.
struct AppIdentity<'a> {
    client_id: &'a str,
    token_url: &'a Url,
    who: String,
}

impl GraphAuth {
    /// Authenticates the app `client_id` of tenant `tenant_id` at the identity platform
    /// `login_url` with a client secret, asking for `scope` (`{graph_url}/.default`).
    #[must_use]
    pub fn client_secret(
        login_url: &Url,
        tenant_id: &str,
        client_id: &str,
        secret: Secret,
        scope: String,
    ) -> GraphAuth {
        crate::net::redact::register_secret(secret.expose());
        GraphAuth::ClientSecret(Box::new(GraphApp::new(
            login_url, tenant_id, client_id, secret, scope,
        )))
    }

    /// Authenticates the app `client_id` of tenant `tenant_id` at the identity platform
    /// `login_url` with a certificate, asking for `scope` (`{graph_url}/.default`).
    ///
    /// `certificate_pem` holds the certificate uploaded to the app registration (its first
    /// `CERTIFICATE` block is used; a chain or a key in the same file is fine);
    /// `private_key_pem` holds its RSA private key (PKCS#8 `PRIVATE KEY` or PKCS#1
    /// `RSA PRIVATE KEY`, unencrypted).
    ///
    /// # Errors
    /// [`GraphAuthError::InvalidCredential`] naming `source.entra.certificate_file` when it
    /// holds no certificate, or `source.entra.private_key_file` when the PEM holds no usable
    /// RSA key or a key that does not belong to the certificate.
    pub fn certificate(
        login_url: &Url,
        tenant_id: &str,
        client_id: &str,
        certificate_pem: &str,
        private_key_pem: Secret,
        scope: String,
    ) -> Result<GraphAuth, GraphAuthError> {
        crate::net::redact::register_secret(private_key_pem.expose());
        let certificate = Certificate::from_pem(certificate_pem, private_key_pem.expose())?;
        Ok(GraphAuth::Certificate(Box::new(GraphApp::new(
            login_url,
            tenant_id,
            client_id,
            certificate,
            scope,
        ))))
    }

    /// The access token for one request to Microsoft Graph: the cached one while it is fresh,
    /// else a new one; concurrent callers share one token request.
    ///
    /// # Errors
    /// [`GraphAuthError`]: the token endpoint refused, failed or could not be reached, or its
    /// answer cannot be read. [`GraphAuthError::is_transient`] tells whether to retry.
    pub async fn bearer(&self, http: &reqwest::Client) -> Result<Secret, GraphAuthError> {
        match self {
            GraphAuth::ClientSecret(app) => app.access_token(http).await,
            GraphAuth::Certificate(app) => app.access_token(http).await,
        }
    }

    /// Drops the cached token, so that the next request gets a new one (called once on a 401).
    pub fn invalidate(&self) {
        match self {
            GraphAuth::ClientSecret(app) => *app.cached() = None,
            GraphAuth::Certificate(app) => *app.cached() = None,
        }
    }

    /// Names the app for messages: `tenant <tenant_id>, client <client_id>`.
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            GraphAuth::ClientSecret(app) => app.describe(),
            GraphAuth::Certificate(app) => app.describe(),
        }
    }
}

impl GraphAuthError {
    /// Whether a later attempt may succeed (429, 5xx, or the endpoint could not be reached).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GraphAuthError::Unavailable { .. } | GraphAuthError::Transport { .. }
        )
    }

    /// How long the token endpoint asked us to wait before trying again, if it said.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GraphAuthError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

impl<C> GraphApp<C> {
    fn new(
        login_url: &Url,
        tenant_id: &str,
        client_id: &str,
        credential: C,
        scope: String,
    ) -> GraphApp<C> {
        GraphApp {
            tenant_id: tenant_id.to_owned(),
            client_id: client_id.to_owned(),
            token_url: token_url(login_url, tenant_id),
            scope,
            credential,
            cached: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// `tenant <tenant_id>, client <client_id>`.
    fn describe(&self) -> String {
        format!("tenant {}, client {}", self.tenant_id, self.client_id)
    }

    /// Locks the cached token. A panic while it was held cannot leave it inconsistent (every
    /// update is a single assignment), so a poisoned lock is used as it is.
    fn cached(&self) -> MutexGuard<'_, Option<AccessToken>> {
        self.cached.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached token if it is still fresh.
    fn fresh_token(&self) -> Option<Secret> {
        self.cached()
            .as_ref()
            .filter(|token| Instant::now() < token.renew_at)
            .map(|token| token.value.clone())
    }
}

#[expect(
    private_bounds,
    reason = "the bound is an implementation detail of the crate's two credentials"
)]
impl<C: Credential> GraphApp<C> {
    /// The cached token, or a new one; concurrent callers share one token request.
    async fn access_token(&self, http: &reqwest::Client) -> Result<Secret, GraphAuthError> {
        if let Some(token) = self.fresh_token() {
            return Ok(token);
        }
        let _fetching = self.fetching.lock().await;
        // Another caller may have fetched a token while this one waited.
        if let Some(token) = self.fresh_token() {
            return Ok(token);
        }
        let token = self.request_token(http).await?;
        let value = token.value.clone();
        *self.cached() = Some(token);
        Ok(value)
    }

    /// Asks the token endpoint for a token.
    async fn request_token(&self, http: &reqwest::Client) -> Result<AccessToken, GraphAuthError> {
        // The whole URL: which host answered matters (login_url, national clouds, proxies),
        // and it holds no secret.
        let url = self.token_url.to_string();
        let body = self.token_request_body()?;
        let transport = |error: reqwest::Error| GraphAuthError::Transport {
            url: url.clone(),
            message: describe_transport(&error),
        };
        let response = http
            .post(self.token_url.clone())
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = crate::net::redact::read_body(response)
            .await
            .map_err(transport)?;
        if status.is_success() {
            return self.parse_token(&body);
        }
        let answer = OAuthError::parse(&body, status);
        if let Verdict::RetryAfter(retry_after) =
            retry::classify_status(status, &headers, SystemTime::now())
        {
            return Err(GraphAuthError::Unavailable {
                url,
                status: status.as_u16(),
                detail: self.credential.redact(answer.summary()),
                retry_after,
            });
        }
        Err(self.refused(status, answer))
    }

    /// The token request's form: `client_id`, `scope`, `grant_type` and the credential's fields.
    fn token_request_body(&self) -> Result<String, GraphAuthError> {
        let identity = AppIdentity {
            client_id: &self.client_id,
            token_url: &self.token_url,
            who: self.describe(),
        };
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("client_id", &self.client_id)
            .append_pair("scope", &self.scope)
            .append_pair("grant_type", "client_credentials");
        self.credential.add_to_form(&mut form, &identity)?;
        Ok(form.finish())
    }

    /// Reads a 2xx answer of the token endpoint.
    fn parse_token(&self, body: &[u8]) -> Result<AccessToken, GraphAuthError> {
        let invalid = |message: &str| GraphAuthError::InvalidResponse {
            url: self.token_url.to_string(),
            message: message.to_owned(),
        };
        let value: Value =
            serde_json::from_slice(body).map_err(|_| invalid("the answer is not a JSON object"))?;
        let access_token = value
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| invalid("the answer has no access_token"))?;
        if HeaderValue::from_str(&format!("Bearer {access_token}")).is_err() {
            return Err(invalid(
                "the access token holds characters that cannot be sent in an HTTP header",
            ));
        }
        match value.get("token_type").and_then(Value::as_str) {
            Some(kind) if kind.eq_ignore_ascii_case("Bearer") => {}
            Some(_) => return Err(invalid("the token_type is not Bearer")),
            None => return Err(invalid("the answer has no token_type")),
        }
        // The v2.0 endpoint sends a number; the v1.0 endpoint sent a string.
        let lifetime = match value.get("expires_in") {
            Some(Value::Number(number)) => number.as_u64().map(Duration::from_secs),
            Some(Value::String(text)) => text.trim().parse().ok().map(Duration::from_secs),
            _ => None,
        }
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let renew_at =
            Instant::now() + lifetime.saturating_sub(RENEW_BEFORE_EXPIRY.min(lifetime / 2));
        tracing::debug!(
            message = "Got a Microsoft Graph access token.",
            tenant_id = %self.tenant_id,
            client_id = %self.client_id,
            expires_in_s = lifetime.as_secs()
        );
        Ok(AccessToken {
            value: issued(access_token),
            renew_at,
        })
    }

    /// The error for a refused token request, with what to check.
    fn refused(&self, status: StatusCode, answer: OAuthError) -> GraphAuthError {
        let hint = self.hint(&answer);
        let description = self.credential.redact(answer.description);
        let mut description = match &answer.code {
            Some(code) if !description.is_empty() && !description.starts_with(code.as_str()) => {
                format!("{code}: {description}")
            }
            Some(code) if description.is_empty() => code.clone(),
            _ => description,
        };
        if let Some(correlation_id) = &answer.correlation_id {
            description.push_str(&format!(" [correlation id {correlation_id}]"));
        }
        GraphAuthError::Refused {
            who: self.describe(),
            status: status.as_u16(),
            error: answer.error,
            code: answer.code,
            description,
            hint,
        }
    }

    /// What to check for a refused token request: the credential's advice for its own codes,
    /// then the codes about the tenant, the app and the scope, then the general advice.
    fn hint(&self, answer: &OAuthError) -> String {
        if let Some(hint) = self.credential.hint_for(answer.number) {
            return hint;
        }
        let tenant = &self.tenant_id;
        let client = &self.client_id;
        match answer.number {
            Some(90002 | 90023) => format!(
                "check source.entra.tenant_id ({tenant}; the directory id or a verified domain) \
                 and that login_url belongs to the tenant's cloud"
            ),
            Some(700016) => format!(
                "no application with client id {client} exists in tenant {tenant}: check \
                 source.entra.client_id (the Application (client) ID of the app registration) \
                 and source.entra.tenant_id"
            ),
            Some(7000112) => format!(
                "the application {client} is disabled in tenant {tenant}; enable its enterprise \
                 application (Properties: Enabled for users to sign in)"
            ),
            Some(70011 | 1002012) => format!(
                "the scope {} is not valid: check source.entra.graph_url (the token scope is \
                 graph_url + /.default)",
                self.scope
            ),
            Some(500011) => format!(
                "the resource of the scope {} is not known in tenant {tenant}: check that \
                 graph_url and login_url belong to the same cloud",
                self.scope
            ),
            Some(65001) => format!(
                "grant admin consent for the application permissions {READ_PERMISSIONS} \
                 (app registration > API permissions > Grant admin consent)"
            ),
            Some(53003) => format!(
                "a Conditional Access policy for workload identities blocks the application \
                 {client}; exclude it or allow this host's address"
            ),
            _ => self.credential.general_hint(),
        }
    }
}

impl<C> fmt::Debug for GraphApp<C>
where
    C: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphApp")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("token_url", &self.token_url.as_str())
            .field("scope", &self.scope)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl Credential for Secret {
    fn add_to_form(
        &self,
        form: &mut url::form_urlencoded::Serializer<'_, String>,
        _app: &AppIdentity<'_>,
    ) -> Result<(), GraphAuthError> {
        form.append_pair("client_secret", self.expose());
        Ok(())
    }

    fn hint_for(&self, code: Option<u64>) -> Option<String> {
        match code {
            Some(7000215) => Some(format!(
                "the client secret is wrong: {CLIENT_SECRET_KEY} must be the secret's Value \
                 (shown once when it was created), not its Secret ID; create a new secret under \
                 the app registration's Certificates & secrets if the value is lost"
            )),
            Some(7000222) => Some(format!(
                "the client secret has expired: create a new one under the app registration's \
                 Certificates & secrets and put it in {CLIENT_SECRET_KEY}"
            )),
            _ => None,
        }
    }

    fn general_hint(&self) -> String {
        format!(
            "check source.entra.tenant_id and client_id, that {CLIENT_SECRET_KEY} is the current \
             secret's Value (secrets expire), and that admin consent is granted for \
             {READ_PERMISSIONS}"
        )
    }
}

impl Credential for Certificate {
    fn add_to_form(
        &self,
        form: &mut url::form_urlencoded::Serializer<'_, String>,
        app: &AppIdentity<'_>,
    ) -> Result<(), GraphAuthError> {
        let assertion = self.client_assertion(app)?;
        form.append_pair("client_assertion_type", JWT_BEARER)
            .append_pair("client_assertion", &assertion);
        Ok(())
    }

    fn hint_for(&self, code: Option<u64>) -> Option<String> {
        let thumbprint = &self.thumbprint;
        match code {
            Some(700027 | 700021 | 7000274 | 7000277) => Some(format!(
                "Entra ID does not know this certificate: upload {CERTIFICATE_KEY} (thumbprint \
                 {thumbprint}) to the app registration's Certificates & secrets, and check that \
                 it has not expired there"
            )),
            Some(700024) => Some(
                "the client assertion is outside its valid time range: check this host's clock \
                 (NTP)"
                    .to_owned(),
            ),
            _ => None,
        }
    }

    fn general_hint(&self) -> String {
        format!(
            "check source.entra.tenant_id and client_id, that {CERTIFICATE_KEY} (thumbprint {}) \
             is uploaded to the app registration's Certificates & secrets and not expired, and \
             that admin consent is granted for {READ_PERMISSIONS}",
            self.thumbprint
        )
    }
}

impl Certificate {
    /// Reads the first certificate of `certificate_pem` and the RSA key of `private_key_pem`,
    /// and checks that they belong together.
    fn from_pem(
        certificate_pem: &str,
        private_key_pem: &str,
    ) -> Result<Certificate, GraphAuthError> {
        let der = certificate_der(certificate_pem)?;
        let key = rsa_key(private_key_pem)?;
        let thumbprint_s256 = digest(&SHA256, &der);
        let thumbprint_s1 = digest(&SHA1_FOR_LEGACY_USE_ONLY, &der);
        let thumbprint: String = thumbprint_s1
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02X}"))
            .collect();
        // The certificate's SubjectPublicKeyInfo holds the key's PKCS#1 RSAPublicKey as is.
        let public_key = key.public_key().as_ref();
        if !der
            .windows(public_key.len())
            .any(|window| window == public_key)
        {
            return Err(GraphAuthError::InvalidCredential {
                key: PRIVATE_KEY_KEY,
                message: format!(
                    "the private key does not belong to the certificate in {CERTIFICATE_KEY} \
                     (thumbprint {thumbprint}); give the key the certificate was made from"
                ),
            });
        }
        Ok(Certificate {
            key,
            x5t_s256: URL_SAFE_NO_PAD.encode(thumbprint_s256.as_ref()),
            x5t: URL_SAFE_NO_PAD.encode(thumbprint_s1.as_ref()),
            thumbprint,
        })
    }

    /// A new client assertion: header `alg` PS256, `typ` JWT, `x5t#S256` and `x5t`; claims
    /// `aud` = the token URL, `iss` = `sub` = the client id, a random `jti` (a GUID), `nbf` =
    /// `iat` = now and `exp` ten minutes later.
    fn client_assertion(&self, app: &AppIdentity<'_>) -> Result<String, GraphAuthError> {
        let now = unix_seconds();
        let header = json!({
            "alg": "PS256",
            "typ": "JWT",
            "x5t#S256": self.x5t_s256,
            "x5t": self.x5t,
        });
        let claims = json!({
            "aud": app.token_url.as_str(),
            "iss": app.client_id,
            "sub": app.client_id,
            "jti": random_guid(),
            "nbf": now,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME.as_secs(),
        });
        let mut jws = URL_SAFE_NO_PAD.encode(header.to_string());
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0; self.key.public_modulus_len()];
        self.key
            .sign(
                &RSA_PSS_SHA256,
                &SystemRandom::new(),
                jws.as_bytes(),
                &mut signature,
            )
            .map_err(|error| GraphAuthError::Signing {
                who: app.who.clone(),
                message: error.to_string(),
            })?;
        jws.push('.');
        jws.push_str(&URL_SAFE_NO_PAD.encode(signature));
        crate::net::redact::register_issued(&jws);
        Ok(jws)
    }
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("thumbprint", &self.thumbprint)
            .field("x5t#S256", &self.x5t_s256)
            .field("key", &"RSA (PS256)")
            .finish()
    }
}

/// An OAuth error answer of the identity platform, or what stands in for it.
struct OAuthError {
    /// The `error` code, or `http_<status>` when the body has none.
    error: String,
    /// Entra ID's code, `AADSTS<n>`.
    code: Option<String>,
    /// The number of that code.
    number: Option<u64>,
    /// The first line of `error_description` (the rest is trace and correlation ids and a
    /// timestamp), or the start of a body that is not an OAuth error.
    description: String,
    /// The `correlation_id`.
    correlation_id: Option<String>,
}

impl OAuthError {
    /// Reads an OAuth error body: `{"error", "error_description", "error_codes", …}`.
    fn parse(body: &[u8], status: StatusCode) -> OAuthError {
        let value: Option<Value> = serde_json::from_slice(body).ok();
        let field = |name: &str| {
            value
                .as_ref()
                .and_then(|value| value.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let error = field("error").unwrap_or_else(|| format!("http_{}", status.as_u16()));
        let full_description = field("error_description");
        let description = match &full_description {
            Some(text) => text.lines().next().unwrap_or_default().trim().to_owned(),
            None => {
                let text = String::from_utf8_lossy(body);
                text.trim().chars().take(200).collect()
            }
        };
        let number = value
            .as_ref()
            .and_then(|value| value.get("error_codes"))
            .and_then(Value::as_array)
            .and_then(|codes| codes.first())
            .and_then(Value::as_u64)
            .or_else(|| {
                // "AADSTS7000215: Invalid client secret provided. …"
                let digits: String = description
                    .strip_prefix("AADSTS")?
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().ok()
            });
        OAuthError {
            error,
            code: number.map(|number| format!("AADSTS{number}")),
            number,
            description,
            correlation_id: field("correlation_id"),
        }
    }

    /// `error: description`, for the transient-error detail.
    fn summary(&self) -> String {
        format!("{}{}", self.error, with_colon(&self.description))
    }
}

/// `{login_url}/{tenant_id}/oauth2/v2.0/token`, keeping a path that `login_url` has (a proxy).
fn token_url(login_url: &Url, tenant_id: &str) -> Url {
    let mut url = login_url.clone();
    url.set_query(None);
    url.set_fragment(None);
    // An http(s) URL always has path segments; `Err` is only for URLs like `mailto:`, which the
    // configuration refuses.
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .extend([tenant_id, "oauth2", "v2.0", "token"]);
    }
    url
}

/// The DER bytes of the first `CERTIFICATE` block of a PEM text.
fn certificate_der(pem: &str) -> Result<Vec<u8>, GraphAuthError> {
    let invalid = |message: String| GraphAuthError::InvalidCredential {
        key: CERTIFICATE_KEY,
        message,
    };
    let blocks = pem_blocks(pem);
    let Some((_, der)) = blocks.iter().find(|(label, _)| label == "CERTIFICATE") else {
        return Err(invalid(if blocks.is_empty() {
            "not a PEM file (expected a -----BEGIN CERTIFICATE----- block); convert a DER \
             certificate with `openssl x509 -inform der -in CERT.cer -out CERT.pem`, or a .pfx \
             with `openssl pkcs12 -in CERT.pfx -nokeys -out CERT.pem`"
                .to_owned()
        } else {
            let labels: Vec<&str> = blocks.iter().map(|(label, _)| label.as_str()).collect();
            format!(
                "the PEM holds no certificate (found {}); give the certificate uploaded to the \
                 app registration",
                labels.join(", ")
            )
        }));
    };
    let der = der
        .as_ref()
        .map_err(|()| invalid("the CERTIFICATE block is not valid base64".to_owned()))?;
    // A certificate is a DER SEQUENCE.
    if der.first() != Some(&0x30) || der.len() < 64 {
        return Err(invalid(
            "the CERTIFICATE block does not hold a DER certificate".to_owned(),
        ));
    }
    Ok(der.clone())
}

/// The RSA private key of a PEM text.
fn rsa_key(pem: &str) -> Result<RsaKeyPair, GraphAuthError> {
    let invalid = |message: String| GraphAuthError::InvalidCredential {
        key: PRIVATE_KEY_KEY,
        message,
    };
    let blocks = pem_blocks(pem);
    if blocks.is_empty() {
        return Err(invalid(
            "not a PEM file (expected a -----BEGIN PRIVATE KEY----- block); extract the key of a \
             .pfx with `openssl pkcs12 -in CERT.pfx -nocerts -nodes -out KEY.pem`"
                .to_owned(),
        ));
    }
    let Some((label, der)) = blocks
        .iter()
        .find(|(label, _)| label.ends_with("PRIVATE KEY"))
    else {
        let labels: Vec<&str> = blocks.iter().map(|(label, _)| label.as_str()).collect();
        return Err(invalid(format!(
            "the PEM holds no private key (found {}); give the certificate's private key",
            labels.join(", ")
        )));
    };
    let der = der
        .as_ref()
        .map_err(|()| invalid(format!("the {label} block is not valid base64")))?;
    let not_rsa = || {
        invalid(
            "not a usable RSA private key; Entra ID client assertions are signed PS256, which \
             needs the RSA key (2048 bits or more) of the certificate"
                .to_owned(),
        )
    };
    match label.as_str() {
        "RSA PRIVATE KEY" => RsaKeyPair::from_der(der).map_err(|_| not_rsa()),
        "PRIVATE KEY" => RsaKeyPair::from_pkcs8(der).map_err(|_| not_rsa()),
        "ENCRYPTED PRIVATE KEY" => Err(invalid(
            "the private key is encrypted; decrypt it (openssl pkcs8 -in KEY -out PLAIN) and \
             protect the file instead"
                .to_owned(),
        )),
        _ => Err(not_rsa()),
    }
}

/// A random GUID (version 4), the form Entra ID documents for `jti`.
fn random_guid() -> String {
    let mut bytes: [u8; 16] = rand::random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// An access token the identity platform issued, registered with the redaction step.
fn issued(token: &str) -> Secret {
    crate::net::redact::register_issued(token);
    Secret::new(token)
}

#[cfg(test)]
mod tests;
