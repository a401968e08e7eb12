//! Tests of Okta authentication against a wiremock token endpoint, with the throw-away keys in
//! `tests/fixtures/okta/`. Signatures are checked with jsonwebtoken, independently of the
//! signing code.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::*;

const CLIENT_ID: &str = "0oa1testclient";
const ACCESS_TOKEN: &str = "access-SECRET-token-1";
const SCOPES: [&str; 2] = ["okta.users.read", "okta.groups.read"];

fn fixture(name: &str) -> String {
    let file = format!("{}/tests/fixtures/okta/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&file).unwrap_or_else(|error| panic!("{file}: {error}"))
}

fn service_app(server: &MockServer, key_file: &str) -> OktaAuth {
    let org = Url::parse(&server.uri()).expect("the mock server's URL parses");
    OktaAuth::service_app(
        &org,
        CLIENT_ID.to_owned(),
        Secret::new(fixture(key_file)),
        SCOPES.iter().map(|scope| (*scope).to_owned()).collect(),
    )
    .expect("the fixture key loads")
}

fn token_url(server: &MockServer) -> String {
    format!("{}/oauth2/v1/token", server.uri())
}

fn api_url(server: &MockServer) -> Url {
    Url::parse(&format!("{}/api/v1/users?limit=200#frag", server.uri())).expect("valid URL")
}

fn bearer_answer() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "token_type": "Bearer",
        "expires_in": 3600,
        "access_token": ACCESS_TOKEN,
        "scope": "okta.users.read okta.groups.read",
    }))
}

async fn token_requests(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
        .into_iter()
        .filter(|request| request.url.path() == "/oauth2/v1/token")
        .collect()
}

fn form(request: &Request) -> HashMap<String, String> {
    url::form_urlencoded::parse(&request.body)
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect()
}

fn header<'a>(request: &'a Request, name: &str) -> Option<&'a str> {
    request
        .headers
        .get(name)
        .map(|value| value.to_str().expect("ASCII header"))
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

/// Verifies a DPoP proof's ES256 signature against the JWK in its own header and returns its
/// header and claims.
fn verify_proof(proof: &str) -> (Value, Value) {
    let header = jsonwebtoken::decode_header(proof).expect("a JWS header");
    assert_eq!(header.typ.as_deref(), Some("dpop+jwt"));
    assert_eq!(header.alg, Algorithm::ES256);
    let jwk = header.jwk.expect("the proof carries its public key");
    let key = DecodingKey::from_jwk(&jwk).expect("a usable JWK");
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(proof, &key, &validation)
        .expect("the proof's signature verifies");
    let (header, claims) = peek(proof);
    assert_eq!(header["jwk"]["kty"], "EC");
    assert_eq!(header["jwk"]["crv"], "P-256");
    assert!(
        header["jwk"].get("d").is_none(),
        "the private part must not be sent"
    );
    (header, claims)
}

/// Checks a client assertion's signature with `public_pem` and its claims.
fn verify_assertion(
    server: &MockServer,
    assertion: &str,
    alg: Algorithm,
    public_pem: &str,
) -> Value {
    let key = match alg {
        Algorithm::RS256 => DecodingKey::from_rsa_pem(public_pem.as_bytes()),
        _ => DecodingKey::from_ec_pem(public_pem.as_bytes()),
    }
    .expect("the public key loads");
    let mut validation = Validation::new(alg);
    validation.set_audience(&[token_url(server)]);
    validation.set_issuer(&[CLIENT_ID]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(assertion, &key, &validation)
        .expect("the assertion verifies with the public key")
        .claims;
    assert_eq!(claims["sub"], CLIENT_ID);
    assert_eq!(claims["aud"], token_url(server));
    let iat = claims["iat"].as_u64().expect("iat");
    let exp = claims["exp"].as_u64().expect("exp");
    assert_eq!(exp - iat, 300);
    assert!(iat.abs_diff(unix_seconds()) < 60);
    assert!(claims["jti"].as_str().is_some_and(|jti| jti.len() >= 16));
    claims
}

/// Asserts that `text` holds no line of the PEM's body, nor any of `secrets`.
fn assert_no_secret(text: &str, pem: &str, secrets: &[&str]) {
    for line in pem
        .lines()
        .filter(|line| !line.starts_with("-----") && line.len() > 16)
    {
        assert!(!text.contains(line), "key material in {text:?}");
    }
    for secret in secrets {
        assert!(!text.contains(secret), "{secret:?} in {text:?}");
    }
}

#[tokio::test]
async fn api_token_is_sent_as_ssws() {
    let auth = OktaAuth::api_token(Secret::new("00abc-SECRET"));
    let http = reqwest::Client::new();
    let url = Url::parse("https://example.okta.com/api/v1/users").expect("valid URL");
    let headers = auth
        .headers(&http, &Method::GET, &url)
        .await
        .expect("headers");
    let authorization = headers.get(AUTHORIZATION).expect("an Authorization header");
    assert_eq!(authorization, "SSWS 00abc-SECRET");
    assert!(authorization.is_sensitive());
    assert!(headers.get(DPOP).is_none());
    assert_eq!(auth.credential(), "source.okta.token");
    assert!(!format!("{auth:?}").contains("SECRET"));

    let bad = OktaAuth::api_token(Secret::new("bad\nSECRET"));
    let error = bad
        .headers(&http, &Method::GET, &url)
        .await
        .expect_err("a newline cannot be sent");
    let message = error.to_string();
    assert!(message.starts_with("source.okta.token: "), "{message}");
    assert!(!message.contains("SECRET") && !format!("{error:?}").contains("SECRET"));
}

#[test]
fn loads_rsa_and_ec_keys_in_every_pem_form() {
    let org = Url::parse("https://example.okta.com").expect("valid URL");
    for (file, kind) in [
        ("rsa-pkcs1.pem", "RSA (RS256)"),
        ("rsa-pkcs8.pem", "RSA (RS256)"),
        ("ec-pkcs8.pem", "EC P-256 (ES256)"),
        ("ec-sec1.pem", "EC P-256 (ES256)"),
    ] {
        let pem = fixture(file);
        let auth =
            OktaAuth::service_app(&org, CLIENT_ID.to_owned(), Secret::new(pem.clone()), vec![])
                .unwrap_or_else(|error| panic!("{file}: {error}"));
        let debug = format!("{auth:?}");
        assert!(debug.contains(kind), "{file}: {debug}");
        assert_no_secret(&debug, &pem, &[]);
        assert_eq!(auth.credential(), format!("the service app {CLIENT_ID}"));
    }
}

#[test]
fn unusable_keys_name_the_setting_and_never_echo_the_key() {
    let org = Url::parse("https://example.okta.com").expect("valid URL");
    let rsa = fixture("rsa-pkcs8.pem");
    let cut: String = rsa
        .lines()
        .take(5)
        .chain(["-----END PRIVATE KEY-----"])
        .collect::<Vec<_>>()
        .join("\n");
    let cases = [
        (fixture("ec-p384-pkcs8.pem"), "P-256"),
        (fixture("rsa-public.pem"), "no private key"),
        ("just some text".to_owned(), "not a PEM file"),
        (cut, "neither an RSA key"),
        (
            rsa.replace("BEGIN PRIVATE KEY", "BEGIN ENCRYPTED PRIVATE KEY")
                .replace("END PRIVATE KEY", "END ENCRYPTED PRIVATE KEY"),
            "encrypted",
        ),
        (
            rsa.replace("BEGIN PRIVATE KEY", "BEGIN RSA PRIVATE KEY")
                .replace("END PRIVATE KEY", "END RSA PRIVATE KEY"),
            "not a usable RSA private key",
        ),
    ];
    for (pem, expected) in cases {
        let error =
            OktaAuth::service_app(&org, CLIENT_ID.to_owned(), Secret::new(pem.clone()), vec![])
                .expect_err("the key is unusable");
        let message = error.to_string();
        assert!(
            message.starts_with("source.okta.private_key_file: "),
            "{message}"
        );
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
        assert_no_secret(&message, &pem, &[]);
        assert_no_secret(&format!("{error:?}"), &pem, &[]);
    }
}

#[tokio::test]
async fn rsa_client_assertion_verifies_with_the_public_key() {
    for key_file in ["rsa-pkcs1.pem", "rsa-pkcs8.pem"] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/oauth2/v1/token"))
            .respond_with(bearer_answer())
            .mount(&server)
            .await;
        let auth = service_app(&server, key_file);
        let http = reqwest::Client::new();
        let headers = auth
            .headers(&http, &Method::GET, &api_url(&server))
            .await
            .expect("a token");
        assert_eq!(
            headers.get(AUTHORIZATION).expect("Authorization"),
            &format!("Bearer {ACCESS_TOKEN}")
        );
        assert!(headers.get(DPOP).is_none());
        assert!(!auth.uses_dpop());

        let requests = token_requests(&server).await;
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(
            header(request, "content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert!(header(request, "dpop").is_none());
        let form = form(request);
        assert_eq!(form["grant_type"], "client_credentials");
        assert_eq!(form["scope"], "okta.users.read okta.groups.read");
        assert_eq!(
            form["client_assertion_type"],
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        );
        let (assertion_header, _) = peek(&form["client_assertion"]);
        assert_eq!(assertion_header["alg"], "RS256");
        verify_assertion(
            &server,
            &form["client_assertion"],
            Algorithm::RS256,
            &fixture("rsa-public.pem"),
        );
    }
}

#[tokio::test]
async fn ec_client_assertion_verifies_with_the_public_key() {
    for key_file in ["ec-sec1.pem", "ec-pkcs8.pem"] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/oauth2/v1/token"))
            .respond_with(bearer_answer())
            .mount(&server)
            .await;
        let auth = service_app(&server, key_file);
        auth.headers(&reqwest::Client::new(), &Method::GET, &api_url(&server))
            .await
            .expect("a token");
        let requests = token_requests(&server).await;
        let form = form(&requests[0]);
        let (assertion_header, _) = peek(&form["client_assertion"]);
        assert_eq!(assertion_header["alg"], "ES256");
        verify_assertion(
            &server,
            &form["client_assertion"],
            Algorithm::ES256,
            &fixture("ec-public.pem"),
        );
    }
}

#[tokio::test]
async fn the_token_is_cached_and_concurrent_callers_share_one_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/token"))
        .respond_with(bearer_answer().set_delay(Duration::from_millis(200)))
        .mount(&server)
        .await;
    let auth = service_app(&server, "rsa-pkcs8.pem");
    let http = reqwest::Client::new();
    let url = api_url(&server);
    let calls = (0..8).map(|_| auth.headers(&http, &Method::GET, &url));
    for result in futures::future::join_all(calls).await {
        let headers = result.expect("a token");
        assert_eq!(
            headers.get(AUTHORIZATION).expect("Authorization"),
            &format!("Bearer {ACCESS_TOKEN}")
        );
    }
    auth.headers(&http, &Method::GET, &url)
        .await
        .expect("cached");
    assert_eq!(token_requests(&server).await.len(), 1);

    auth.invalidate();
    auth.headers(&http, &Method::GET, &url)
        .await
        .expect("a new token");
    assert_eq!(token_requests(&server).await.len(), 2);
}

#[tokio::test]
async fn a_short_lived_token_is_renewed_before_it_expires() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_type": "Bearer", "expires_in": 1, "access_token": ACCESS_TOKEN,
        })))
        .mount(&server)
        .await;
    let auth = service_app(&server, "ec-pkcs8.pem");
    let http = reqwest::Client::new();
    let url = api_url(&server);
    auth.headers(&http, &Method::GET, &url)
        .await
        .expect("a token");
    auth.headers(&http, &Method::GET, &url)
        .await
        .expect("cached");
    assert_eq!(token_requests(&server).await.len(), 1);
    // A one-second token is renewed at half its life.
    tokio::time::sleep(Duration::from_millis(600)).await;
    auth.headers(&http, &Method::GET, &url)
        .await
        .expect("a new token");
    assert_eq!(token_requests(&server).await.len(), 2);
}

/// A token endpoint that requires DPoP with nonce `n1`: a request without a valid-looking proof
/// carrying that nonce gets `400 use_dpop_nonce`. `first_error` is what a request without any
/// proof gets.
fn dpop_token_endpoint(first_error: &'static str) -> impl Fn(&Request) -> ResponseTemplate {
    move |request: &Request| {
        let proof = request
            .headers
            .get("dpop")
            .and_then(|value| value.to_str().ok());
        match proof {
            None if first_error == "invalid_dpop_proof" => ResponseTemplate::new(400)
                .set_body_json(json!({
                    "error": "invalid_dpop_proof",
                    "error_description": "The DPoP proof JWT header is missing."
                })),
            Some(proof) if peek(proof).1["nonce"] == "n1" => ResponseTemplate::new(200)
                .set_body_json(json!({
                    "token_type": "DPoP", "expires_in": 3600,
                    "access_token": ACCESS_TOKEN, "scope": "okta.users.read",
                })),
            _ => ResponseTemplate::new(400)
                .insert_header("dpop-nonce", "n1")
                .set_body_json(json!({
                    "error": "use_dpop_nonce",
                    "error_description": "Authorization server requires nonce in DPoP proof."
                })),
        }
    }
}

#[tokio::test]
async fn dpop_nonce_round_then_dpop_bound_api_calls() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/token"))
        .respond_with(dpop_token_endpoint("use_dpop_nonce"))
        .mount(&server)
        .await;
    let auth = service_app(&server, "rsa-pkcs8.pem");
    let http = reqwest::Client::new();
    let url = api_url(&server);
    let headers = auth
        .headers(&http, &Method::GET, &url)
        .await
        .expect("a DPoP token");
    assert!(auth.uses_dpop());

    // The token endpoint: a plain request, then one with a proof carrying the nonce and a new
    // client assertion.
    let requests = token_requests(&server).await;
    assert_eq!(requests.len(), 2);
    assert!(header(&requests[0], "dpop").is_none());
    let (jwk, claims) = {
        let (proof_header, claims) = verify_proof(header(&requests[1], "dpop").expect("a proof"));
        (proof_header["jwk"].clone(), claims)
    };
    assert_eq!(claims["htm"], "POST");
    assert_eq!(claims["htu"], token_url(&server));
    assert_eq!(claims["nonce"], "n1");
    assert!(claims.get("ath").is_none());
    assert!(claims["jti"].as_str().is_some_and(|jti| !jti.is_empty()));
    assert!(
        claims["iat"]
            .as_u64()
            .is_some_and(|iat| iat.abs_diff(unix_seconds()) < 60)
    );
    let first = verify_assertion(
        &server,
        &form(&requests[0])["client_assertion"],
        Algorithm::RS256,
        &fixture("rsa-public.pem"),
    );
    let second = verify_assertion(
        &server,
        &form(&requests[1])["client_assertion"],
        Algorithm::RS256,
        &fixture("rsa-public.pem"),
    );
    assert_ne!(
        first["jti"], second["jti"],
        "each token request has a new assertion"
    );

    // The API call: DPoP authorization and a proof bound to the token, the method and the URL.
    let authorization = headers.get(AUTHORIZATION).expect("Authorization");
    assert_eq!(authorization, &format!("DPoP {ACCESS_TOKEN}"));
    assert!(authorization.is_sensitive());
    let proof = headers.get(DPOP).expect("a proof").to_str().expect("ASCII");
    let (proof_header, claims) = verify_proof(proof);
    assert_eq!(proof_header["jwk"], jwk, "one key per process");
    assert_eq!(claims["htm"], "GET");
    assert_eq!(claims["htu"], format!("{}/api/v1/users", server.uri()));
    let expected_ath = URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, ACCESS_TOKEN.as_bytes()).as_ref(),
    );
    assert_eq!(claims["ath"], expected_ath);
    assert!(claims.get("nonce").is_none());

    // A resource-server nonce goes into later proofs; every proof has a new jti.
    auth.set_resource_nonce("r1".to_owned());
    let later = auth
        .headers(&http, &Method::POST, &url)
        .await
        .expect("cached token");
    let (_, later_claims) =
        verify_proof(later.get(DPOP).expect("a proof").to_str().expect("ASCII"));
    assert_eq!(later_claims["nonce"], "r1");
    assert_eq!(later_claims["htm"], "POST");
    assert_ne!(later_claims["jti"], claims["jti"]);
    assert_eq!(token_requests(&server).await.len(), 2);

    // A renewed token is asked for with a proof (and the known nonce) from the start.
    auth.invalidate();
    auth.headers(&http, &Method::GET, &url)
        .await
        .expect("a new token");
    let requests = token_requests(&server).await;
    assert_eq!(requests.len(), 3);
    let (_, claims) = verify_proof(header(&requests[2], "dpop").expect("a proof"));
    assert_eq!(claims["nonce"], "n1");
}

#[tokio::test]
async fn invalid_dpop_proof_switches_to_dpop() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/token"))
        .respond_with(dpop_token_endpoint("invalid_dpop_proof"))
        .mount(&server)
        .await;
    let auth = service_app(&server, "ec-sec1.pem");
    let headers = auth
        .headers(&reqwest::Client::new(), &Method::GET, &api_url(&server))
        .await
        .expect("a DPoP token");
    assert_eq!(
        headers.get(AUTHORIZATION).expect("Authorization"),
        &format!("DPoP {ACCESS_TOKEN}")
    );
    let requests = token_requests(&server).await;
    assert_eq!(
        requests.len(),
        3,
        "plain, proof without nonce, proof with nonce"
    );
    assert!(header(&requests[0], "dpop").is_none());
    assert!(
        verify_proof(header(&requests[1], "dpop").expect("a proof"))
            .1
            .get("nonce")
            .is_none()
    );
    assert_eq!(
        verify_proof(header(&requests[2], "dpop").expect("a proof")).1["nonce"],
        "n1"
    );
}

#[tokio::test]
async fn a_nonce_that_never_settles_is_an_error_not_a_loop() {
    let server = MockServer::start().await;
    let counter = std::sync::atomic::AtomicUsize::new(0);
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/token"))
        .respond_with(move |_: &Request| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ResponseTemplate::new(400)
                .insert_header("dpop-nonce", format!("nonce-{n}").as_str())
                .set_body_json(json!({"error": "use_dpop_nonce"}))
        })
        .mount(&server)
        .await;
    let auth = service_app(&server, "ec-pkcs8.pem");
    let error = auth
        .headers(&reqwest::Client::new(), &Method::GET, &api_url(&server))
        .await
        .expect_err("no token");
    assert!(matches!(error, OktaAuthError::Refused { .. }), "{error:?}");
    assert!(error.to_string().contains("DPoP"), "{error}");
    assert_eq!(token_requests(&server).await.len(), MAX_TOKEN_ROUNDS);
}

#[tokio::test]
async fn invalid_client_names_the_client_and_what_to_check() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/token"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error": "invalid_client",
            "error_description": "The client_assertion signature is invalid.",
        })))
        .mount(&server)
        .await;
    let auth = service_app(&server, "rsa-pkcs8.pem");
    let error = auth
        .headers(&reqwest::Client::new(), &Method::GET, &api_url(&server))
        .await
        .expect_err("refused");
    assert!(!error.is_transient());
    let message = error.to_string();
    for expected in [
        CLIENT_ID,
        "401 invalid_client: The client_assertion signature is invalid.",
        "/oauth2/v1/token",
        "check client_id and the key",
        "public key is registered",
        "source.okta.private_key_file",
        "okta.users.read, okta.groups.read",
        "admin role",
    ] {
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    let requests = token_requests(&server).await;
    let assertion = form(&requests[0])["client_assertion"].clone();
    for text in [message, format!("{error:?}"), format!("{auth:?}")] {
        assert_no_secret(
            &text,
            &fixture("rsa-pkcs8.pem"),
            &[&assertion, ACCESS_TOKEN],
        );
    }
}

#[tokio::test]
async fn invalid_scope_lists_the_scopes() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "error": "invalid_scope",
            "error_description": "The following scopes are not allowed: okta.groups.read",
        })))
        .mount(&server)
        .await;
    let auth = service_app(&server, "ec-pkcs8.pem");
    let message = auth
        .headers(&reqwest::Client::new(), &Method::GET, &api_url(&server))
        .await
        .expect_err("refused")
        .to_string();
    assert!(
        message.contains("check that every scope in source.okta.scopes (okta.users.read, okta.groups.read) is granted"),
        "{message}"
    );
    assert!(
        message.contains("not allowed: okta.groups.read"),
        "{message}"
    );
}

#[tokio::test]
async fn token_endpoint_outages_are_transient() {
    let server = MockServer::start().await;
    let reset = unix_seconds() + 30;
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/token"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("x-rate-limit-limit", "100")
                .insert_header("x-rate-limit-remaining", "0")
                .insert_header("x-rate-limit-reset", reset.to_string().as_str())
                .set_body_json(json!({"errorCode": "E0000047", "errorSummary": "API call exceeded rate limit due to too many requests."})),
        )
        .mount(&server)
        .await;
    let auth = service_app(&server, "ec-pkcs8.pem");
    let error = auth
        .headers(&reqwest::Client::new(), &Method::GET, &api_url(&server))
        .await
        .expect_err("rate-limited");
    assert!(error.is_transient());
    let wait = error.retry_after().expect("the reset is honoured");
    assert!(
        wait > Duration::from_secs(25) && wait <= Duration::from_secs(31),
        "{wait:?}"
    );
    assert!(error.to_string().contains("E0000047"), "{error}");

    let down = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/token"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&down)
        .await;
    let auth = service_app(&down, "ec-pkcs8.pem");
    let error = auth
        .headers(&reqwest::Client::new(), &Method::GET, &api_url(&down))
        .await
        .expect_err("unavailable");
    assert!(error.is_transient());
    assert_eq!(error.retry_after(), None);
}

#[test]
fn pem_blocks_skip_headers_and_other_blocks() {
    let text = "junk\n-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n\
                -----BEGIN PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\nQUJD\nREVG\n-----END PRIVATE KEY-----\n";
    let blocks = pem_blocks(text);
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[0].0, "EC PARAMETERS");
    assert_eq!(blocks[1].0, "PRIVATE KEY");
    assert_eq!(blocks[1].1, Ok(b"ABCDEF".to_vec()));
}
