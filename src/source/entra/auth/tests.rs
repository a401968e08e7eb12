//! Tests of Entra ID authentication against a wiremock token endpoint, with the throw-away key
//! and certificates in `tests/fixtures/entra/`. Signatures are checked with jsonwebtoken, and
//! thumbprints against OpenSSL's fingerprints, independently of the code under test.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::*;

const TENANT: &str = "8f1e1f5c-0b7a-4c42-9a5e-3d2c1b0a9f8e";
const CLIENT_ID: &str = "3c2b1a09-8f7e-4d6c-b5a4-392817161514";
const SECRET: &str = "Xy8Q~client-SECRET-value.abc";
const ACCESS_TOKEN: &str = "eyJ0eXAi.access-SECRET-token.sig";
const SCOPE: &str = "https://graph.microsoft.com/.default";
/// `openssl x509 -in cert.pem -noout -fingerprint -sha256`.
const CERT_SHA256: &str = "D7:7B:2D:37:42:08:88:77:46:09:CD:E4:24:D9:0A:1A:5E:8E:1A:8C:02:B9:EB:5B:39:58:3E:31:B4:F9:D7:FE";
/// `openssl x509 -in cert.pem -noout -fingerprint -sha1`.
const CERT_SHA1: &str = "FB:98:D0:FA:2C:4F:13:40:8F:E8:E1:0B:07:36:98:0F:3A:19:47:5C";

fn fixture(name: &str) -> String {
    let file = format!("{}/tests/fixtures/entra/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&file).unwrap_or_else(|error| panic!("{file}: {error}"))
}

fn login_url(server: &MockServer) -> Url {
    Url::parse(&server.uri()).expect("the mock server's URL parses")
}

fn token_path() -> String {
    format!("/{TENANT}/oauth2/v2.0/token")
}

fn token_endpoint(server: &MockServer) -> String {
    format!("{}{}", server.uri(), token_path())
}

fn secret_auth(server: &MockServer) -> GraphAuth {
    GraphAuth::client_secret(
        &login_url(server),
        TENANT,
        CLIENT_ID,
        Secret::new(SECRET),
        SCOPE.to_owned(),
    )
}

fn certificate_auth(server: &MockServer, key_file: &str) -> GraphAuth {
    GraphAuth::certificate(
        &login_url(server),
        TENANT,
        CLIENT_ID,
        &fixture("cert.pem"),
        Secret::new(fixture(key_file)),
        SCOPE.to_owned(),
    )
    .expect("the fixture certificate and key load")
}

fn bearer_answer() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "token_type": "Bearer",
        "expires_in": 3599,
        "ext_expires_in": 3599,
        "access_token": ACCESS_TOKEN,
    }))
}

async fn mount_token_endpoint(server: &MockServer, answer: ResponseTemplate) {
    Mock::given(method("POST"))
        .and(path(token_path()))
        .respond_with(answer)
        .mount(server)
        .await;
}

async fn token_requests(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
        .into_iter()
        .filter(|request| request.url.path() == token_path())
        .collect()
}

fn form(request: &Request) -> HashMap<String, String> {
    url::form_urlencoded::parse(&request.body)
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect()
}

/// The header and claims of a compact JWS, without checking its signature.
fn peek(jws: &str) -> (Value, Value) {
    let mut parts = jws.split('.');
    let mut part = || -> Value {
        let encoded = parts.next().expect("a JWS has three parts");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(encoded).expect("base64url")).expect("JSON")
    };
    (part(), part())
}

/// base64url of the bytes of an OpenSSL fingerprint (`AB:CD:…`).
fn fingerprint_b64url(fingerprint: &str) -> String {
    let bytes: Vec<u8> = fingerprint
        .split(':')
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex"))
        .collect();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Verifies a client assertion's PS256 signature with the certificate's public key and its
/// claims; returns the claims.
fn verify_assertion(server: &MockServer, assertion: &str) -> Value {
    let key = DecodingKey::from_rsa_pem(fixture("cert.pem").as_bytes())
        .expect("the certificate's public key loads");
    let mut validation = Validation::new(Algorithm::PS256);
    validation.set_audience(&[token_endpoint(server)]);
    validation.set_issuer(&[CLIENT_ID]);
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    validation.validate_nbf = true;
    let claims = jsonwebtoken::decode::<Value>(assertion, &key, &validation)
        .expect("the assertion verifies with the certificate's public key")
        .claims;
    assert_eq!(claims["sub"], CLIENT_ID);
    let nbf = claims["nbf"].as_u64().expect("nbf");
    let iat = claims["iat"].as_u64().expect("iat");
    let exp = claims["exp"].as_u64().expect("exp");
    assert_eq!(exp - nbf, 600, "ten minutes");
    assert_eq!(iat, nbf);
    assert!(iat.abs_diff(unix_seconds()) < 60);
    let jti = claims["jti"].as_str().expect("jti");
    assert_eq!(jti.len(), 36, "a GUID: {jti}");
    assert_eq!(
        jti.chars().filter(|c| *c == '-').count(),
        4,
        "a GUID: {jti}"
    );
    claims
}

/// Asserts that `text` holds none of `secrets`, nor any line of a PEM body in `pems`.
fn assert_no_secret(text: &str, secrets: &[&str], pems: &[&str]) {
    for secret in secrets {
        assert!(!text.contains(secret), "{secret:?} in {text:?}");
    }
    for pem in pems {
        for line in pem
            .lines()
            .filter(|line| !line.starts_with("-----") && line.len() > 16)
        {
            assert!(!text.contains(line), "a PEM line in {text:?}");
        }
    }
}

#[tokio::test]
async fn client_secret_form_and_one_cached_token() {
    let server = MockServer::start().await;
    mount_token_endpoint(&server, bearer_answer()).await;
    let auth = secret_auth(&server);
    let http = reqwest::Client::new();
    for _ in 0..3 {
        let token = auth.bearer(&http).await.expect("a token");
        assert_eq!(token.expose(), ACCESS_TOKEN);
    }
    let requests = token_requests(&server).await;
    assert_eq!(requests.len(), 1, "one token request for three calls");
    let request = &requests[0];
    assert_eq!(
        request.headers.get("content-type").expect("a content type"),
        "application/x-www-form-urlencoded"
    );
    let form = form(request);
    assert_eq!(form["client_id"], CLIENT_ID);
    assert_eq!(form["scope"], SCOPE);
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_secret"], SECRET);
    assert!(!form.contains_key("client_assertion"));
    assert_eq!(form.len(), 4);

    assert_eq!(
        auth.describe(),
        format!("tenant {TENANT}, client {CLIENT_ID}")
    );
    assert_no_secret(&format!("{auth:?}"), &[SECRET, ACCESS_TOKEN], &[]);

    auth.invalidate();
    auth.bearer(&http).await.expect("a new token");
    assert_eq!(token_requests(&server).await.len(), 2);
}

#[tokio::test]
async fn concurrent_callers_share_one_token_request() {
    let server = MockServer::start().await;
    mount_token_endpoint(
        &server,
        bearer_answer().set_delay(Duration::from_millis(200)),
    )
    .await;
    let auth = secret_auth(&server);
    let http = reqwest::Client::new();
    let calls = (0..8).map(|_| auth.bearer(&http));
    for result in futures::future::join_all(calls).await {
        assert_eq!(result.expect("a token").expose(), ACCESS_TOKEN);
    }
    assert_eq!(token_requests(&server).await.len(), 1);
}

#[tokio::test]
async fn a_short_lived_token_is_renewed_before_it_expires() {
    let server = MockServer::start().await;
    // The old v1.0 endpoint sent expires_in as a string; it is accepted too.
    mount_token_endpoint(
        &server,
        ResponseTemplate::new(200).set_body_json(json!({
            "token_type": "Bearer", "expires_in": "1", "access_token": ACCESS_TOKEN,
        })),
    )
    .await;
    let auth = secret_auth(&server);
    let http = reqwest::Client::new();
    auth.bearer(&http).await.expect("a token");
    auth.bearer(&http).await.expect("cached");
    assert_eq!(token_requests(&server).await.len(), 1);
    // A one-second token is renewed at half its life.
    tokio::time::sleep(Duration::from_millis(600)).await;
    auth.bearer(&http).await.expect("a new token");
    assert_eq!(token_requests(&server).await.len(), 2);
}

#[tokio::test]
async fn certificate_assertion_is_ps256_with_thumbprints_and_verifies() {
    for key_file in ["key.pem", "key-pkcs1.pem"] {
        let server = MockServer::start().await;
        mount_token_endpoint(&server, bearer_answer()).await;
        let auth = certificate_auth(&server, key_file);
        let http = reqwest::Client::new();
        assert_eq!(
            auth.bearer(&http).await.expect("a token").expose(),
            ACCESS_TOKEN
        );
        auth.invalidate();
        auth.bearer(&http).await.expect("a second token");

        let requests = token_requests(&server).await;
        assert_eq!(requests.len(), 2);
        let first = form(&requests[0]);
        assert_eq!(first["client_id"], CLIENT_ID);
        assert_eq!(first["scope"], SCOPE);
        assert_eq!(first["grant_type"], "client_credentials");
        assert_eq!(first["client_assertion_type"], JWT_BEARER);
        assert!(!first.contains_key("client_secret"));
        assert_eq!(first.len(), 5);

        let assertion = &first["client_assertion"];
        let (header, _) = peek(assertion);
        assert_eq!(header["alg"], "PS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["x5t#S256"], fingerprint_b64url(CERT_SHA256));
        assert_eq!(header["x5t"], fingerprint_b64url(CERT_SHA1));
        let first_claims = verify_assertion(&server, assertion);
        let second_claims = verify_assertion(&server, &form(&requests[1])["client_assertion"]);
        assert_ne!(
            first_claims["jti"], second_claims["jti"],
            "each token request has a new assertion"
        );

        let debug = format!("{auth:?}");
        assert!(debug.contains(&CERT_SHA1.replace(':', "")), "{debug}");
        assert_no_secret(&debug, &[assertion, ACCESS_TOKEN], &[&fixture(key_file)]);
    }
}

#[tokio::test]
async fn a_certificate_file_with_the_key_and_a_chain_works() {
    let server = MockServer::start().await;
    mount_token_endpoint(&server, bearer_answer()).await;
    // The certificate first, then another one (a chain), then the key: all in one file.
    let combined = format!(
        "{}{}{}",
        fixture("cert.pem"),
        fixture("other-cert.pem"),
        fixture("key.pem")
    );
    let auth = GraphAuth::certificate(
        &login_url(&server),
        TENANT,
        CLIENT_ID,
        &combined,
        Secret::new(combined.clone()),
        SCOPE.to_owned(),
    )
    .expect("the combined file loads");
    auth.bearer(&reqwest::Client::new()).await.expect("a token");
    let requests = token_requests(&server).await;
    let (header, _) = peek(&form(&requests[0])["client_assertion"]);
    assert_eq!(header["x5t#S256"], fingerprint_b64url(CERT_SHA256));
}

#[test]
fn unusable_certificates_and_keys_name_the_setting() {
    let login = Url::parse("https://login.microsoftonline.com").expect("valid URL");
    let load = |certificate: &str, key: &str| {
        GraphAuth::certificate(
            &login,
            TENANT,
            CLIENT_ID,
            certificate,
            Secret::new(key),
            SCOPE.to_owned(),
        )
        .expect_err("refused")
    };
    let cases = [
        (
            load(&fixture("other-cert.pem"), &fixture("key.pem")),
            PRIVATE_KEY_KEY,
            "does not belong to the certificate",
        ),
        (
            load(&fixture("cert.pem"), &fixture("ec-key.pem")),
            PRIVATE_KEY_KEY,
            "PS256, which needs the RSA key",
        ),
        (
            load(&fixture("key.pem"), &fixture("key.pem")),
            CERTIFICATE_KEY,
            "the PEM holds no certificate (found PRIVATE KEY)",
        ),
        (
            load("not a certificate", &fixture("key.pem")),
            CERTIFICATE_KEY,
            "not a PEM file",
        ),
        (
            load(&fixture("cert.pem"), &fixture("cert.pem")),
            PRIVATE_KEY_KEY,
            "the PEM holds no private key (found CERTIFICATE)",
        ),
        (
            load(
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
                &fixture("key.pem"),
            ),
            CERTIFICATE_KEY,
            "not valid base64",
        ),
        (
            load(
                &fixture("cert.pem"),
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nQUJD\n-----END ENCRYPTED PRIVATE KEY-----\n",
            ),
            PRIVATE_KEY_KEY,
            "the private key is encrypted",
        ),
    ];
    for (error, key, expected) in cases {
        let message = error.to_string();
        assert!(
            matches!(&error, GraphAuthError::InvalidCredential { key: named, .. } if *named == key),
            "{error:?}"
        );
        assert!(message.starts_with(key), "{message}");
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        assert_no_secret(
            &format!("{message} {error:?}"),
            &[],
            &[&fixture("key.pem"), &fixture("ec-key.pem")],
        );
    }
}

#[tokio::test]
async fn an_invalid_secret_names_tenant_client_and_aadsts_code() {
    let server = MockServer::start().await;
    mount_token_endpoint(
        &server,
        ResponseTemplate::new(401).set_body_json(json!({
            "error": "invalid_client",
            "error_description": format!(
                "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in \
                 the request is the client secret value, not the client secret ID, for a secret \
                 added to app '{CLIENT_ID}'.\r\nTrace ID: 0b9c2f4e-1d3a-4b5c-8e7f-6a5b4c3d2e1f\r\n\
                 Correlation ID: 5f4e3d2c-1b0a-4998-8776-655443322110\r\nTimestamp: 2025-01-14 \
                 10:11:12Z"
            ),
            "error_codes": [7000215],
            "timestamp": "2025-01-14 10:11:12Z",
            "trace_id": "0b9c2f4e-1d3a-4b5c-8e7f-6a5b4c3d2e1f",
            "correlation_id": "5f4e3d2c-1b0a-4998-8776-655443322110",
            "error_uri": "https://login.microsoftonline.com/error?code=7000215"
        })),
    )
    .await;
    let auth = secret_auth(&server);
    let error = auth
        .bearer(&reqwest::Client::new())
        .await
        .expect_err("refused");
    assert!(!error.is_transient());
    assert!(
        matches!(&error, GraphAuthError::Refused { status: 401, code: Some(code), .. } if code == "AADSTS7000215"),
        "{error:?}"
    );
    let message = error.to_string();
    for expected in [
        &format!("tenant {TENANT}, client {CLIENT_ID}"),
        "(401 invalid_client: AADSTS7000215: Invalid client secret provided.",
        "[correlation id 5f4e3d2c-1b0a-4998-8776-655443322110]",
        "the client secret is wrong",
        "Value",
        "not its Secret ID",
        CLIENT_SECRET_KEY,
    ] {
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    assert!(
        !message.contains("Trace ID"),
        "only the first line: {message}"
    );
    assert!(!message.contains('\n'), "{message}");
    for text in [message, format!("{error:?}"), format!("{auth:?}")] {
        assert_no_secret(&text, &[SECRET], &[]);
    }
}

#[tokio::test]
async fn refusals_get_hints_by_code() {
    let cases: [(u64, &str, &str); 5] = [
        (7000222, "invalid_client", "the client secret has expired"),
        (
            700016,
            "unauthorized_client",
            "no application with client id",
        ),
        (90002, "invalid_request", "check source.entra.tenant_id"),
        (70011, "invalid_scope", "check source.entra.graph_url"),
        (
            9_999_999,
            "invalid_request",
            "admin consent is granted for User.Read.All",
        ),
    ];
    for (code, oauth_error, expected) in cases {
        let server = MockServer::start().await;
        mount_token_endpoint(
            &server,
            ResponseTemplate::new(400).set_body_json(json!({
                "error": oauth_error,
                "error_description": format!("AADSTS{code}: Something.\r\nTrace ID: x"),
                "error_codes": [code],
            })),
        )
        .await;
        let message = secret_auth(&server)
            .bearer(&reqwest::Client::new())
            .await
            .expect_err("refused")
            .to_string();
        assert!(message.contains(&format!("AADSTS{code}")), "{message}");
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }

    // A certificate the app registration does not know: upload it, by thumbprint.
    let server = MockServer::start().await;
    mount_token_endpoint(
        &server,
        ResponseTemplate::new(401).set_body_json(json!({
            "error": "invalid_client",
            "error_description": "AADSTS700027: The certificate with identifier used to sign the \
                client assertion is not registered on application.",
            "error_codes": [700027],
        })),
    )
    .await;
    let auth = certificate_auth(&server, "key.pem");
    let error = auth
        .bearer(&reqwest::Client::new())
        .await
        .expect_err("refused");
    let message = error.to_string();
    for expected in [
        "AADSTS700027",
        "upload source.entra.certificate_file",
        &format!("thumbprint {}", CERT_SHA1.replace(':', "")),
        TENANT,
        CLIENT_ID,
    ] {
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    let assertion = form(&token_requests(&server).await[0])["client_assertion"].clone();
    for text in [message, format!("{error:?}")] {
        assert_no_secret(&text, &[&assertion], &[&fixture("key.pem")]);
    }

    // Without error_codes, the code is read from the description; a body that is not OAuth is
    // described.
    let server = MockServer::start().await;
    mount_token_endpoint(
        &server,
        ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_request",
            "error_description": "AADSTS90002: Tenant 'x' not found.",
        })),
    )
    .await;
    let error = secret_auth(&server)
        .bearer(&reqwest::Client::new())
        .await
        .expect_err("refused");
    assert!(
        matches!(&error, GraphAuthError::Refused { code: Some(code), .. } if code == "AADSTS90002"),
        "{error:?}"
    );
    let server = MockServer::start().await;
    mount_token_endpoint(
        &server,
        ResponseTemplate::new(404).set_body_string("<html>Not here</html>"),
    )
    .await;
    let message = secret_auth(&server)
        .bearer(&reqwest::Client::new())
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        message.contains("(404 http_404: <html>Not here</html>)"),
        "{message}"
    );
}

#[tokio::test]
async fn token_endpoint_outages_are_transient() {
    let server = MockServer::start().await;
    mount_token_endpoint(
        &server,
        ResponseTemplate::new(429)
            .insert_header("retry-after", "7")
            .set_body_json(json!({
                "error": "temporarily_unavailable",
                "error_description": "AADSTS50196: The server terminated an operation because it encountered a client request loop.",
            })),
    )
    .await;
    let error = secret_auth(&server)
        .bearer(&reqwest::Client::new())
        .await
        .expect_err("throttled");
    assert!(error.is_transient());
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
    assert!(
        error
            .to_string()
            .contains("(429): temporarily_unavailable: AADSTS50196"),
        "{error}"
    );

    let server = MockServer::start().await;
    mount_token_endpoint(&server, ResponseTemplate::new(503)).await;
    let error = secret_auth(&server)
        .bearer(&reqwest::Client::new())
        .await
        .expect_err("unavailable");
    assert!(error.is_transient());
    assert_eq!(error.retry_after(), None);
}

#[tokio::test]
async fn unreadable_token_answers_are_invalid_responses() {
    for body in [
        json!({"token_type": "Bearer", "expires_in": 3599}),
        json!({"expires_in": 3599, "access_token": ACCESS_TOKEN}),
        json!({"token_type": "pop", "expires_in": 3599, "access_token": ACCESS_TOKEN}),
        json!({"token_type": "Bearer", "access_token": "line\nbreak"}),
    ] {
        let server = MockServer::start().await;
        mount_token_endpoint(&server, ResponseTemplate::new(200).set_body_json(&body)).await;
        let error = secret_auth(&server)
            .bearer(&reqwest::Client::new())
            .await
            .expect_err("unreadable");
        assert!(
            matches!(error, GraphAuthError::InvalidResponse { .. }),
            "{body}: {error:?}"
        );
        assert!(!error.is_transient());
        assert_no_secret(&format!("{error} {error:?}"), &[ACCESS_TOKEN, "break"], &[]);
    }
}

#[test]
fn token_urls_keep_a_proxy_prefix_and_escape_the_tenant() {
    let url = |login: &str, tenant: &str| {
        token_url(&Url::parse(login).expect("valid URL"), tenant).to_string()
    };
    assert_eq!(
        url("https://login.microsoftonline.com", TENANT),
        format!("https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token")
    );
    assert_eq!(
        url(
            "https://login.microsoftonline.us/",
            "contoso.onmicrosoft.com"
        ),
        "https://login.microsoftonline.us/contoso.onmicrosoft.com/oauth2/v2.0/token"
    );
    assert_eq!(
        url("http://127.0.0.1:8080/proxy/login/", "t"),
        "http://127.0.0.1:8080/proxy/login/t/oauth2/v2.0/token"
    );
    assert_eq!(
        url("https://login.example.com", "a/b?c"),
        "https://login.example.com/a%2Fb%3Fc/oauth2/v2.0/token"
    );
}

#[test]
fn guids_are_version_4() {
    let first = random_guid();
    let second = random_guid();
    assert_ne!(first, second);
    let groups: Vec<&str> = first.split('-').collect();
    assert_eq!(
        groups.iter().map(|group| group.len()).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12]
    );
    assert!(groups[2].starts_with('4'), "{first}");
    assert!(groups[3].starts_with(['8', '9', 'a', 'b']), "{first}");
}
