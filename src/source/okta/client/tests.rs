//! Tests of the Okta client against wiremock, on the real clock (reqwest needs real sockets, so
//! tokio's paused clock cannot be used); the waits are kept to a second or two.

use std::sync::atomic::AtomicUsize;
use std::time::Instant as StdInstant;

use reqwest::header::AUTHORIZATION;
use serde_json::json;
use wiremock::matchers::{body_json, header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::*;
use crate::config::Secret;

const TOKEN: &str = "00SSWS-SECRET-token";

fn org(server: &MockServer) -> Url {
    Url::parse(&server.uri()).expect("the mock server's URL parses")
}

fn client_with(server: &MockServer, auth: OktaAuth, max_retries: u32) -> OktaClient {
    let backoff = Backoff::new(
        Duration::from_millis(20),
        Duration::from_millis(100),
        max_retries,
    );
    OktaClient::with_backoff(org(server), auth, Duration::from_secs(10), backoff)
        .expect("the client builds")
}

fn client(server: &MockServer) -> OktaClient {
    client_with(server, OktaAuth::api_token(Secret::new(TOKEN)), 3)
}

fn users(range: std::ops::Range<usize>) -> Value {
    Value::Array(
        range
            .map(|n| json!({"id": format!("00u{n}"), "status": "ACTIVE", "profile": {"login": format!("u{n}@example.com")}}))
            .collect(),
    )
}

fn ids(pages: &[Vec<Value>]) -> Vec<String> {
    pages
        .iter()
        .flatten()
        .map(|user| user["id"].as_str().expect("an id").to_owned())
        .collect()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Reads every page of `path`, returning the pages.
async fn read_all(client: &OktaClient, path: &str) -> Result<Vec<Vec<Value>>, OktaError> {
    let mut pages = Vec::new();
    client
        .get_pages(path, None, |items| {
            pages.push(items);
            Ok(true)
        })
        .await?;
    Ok(pages)
}

/// Asserts that neither the error's `Display` nor its `Debug` holds a secret.
fn assert_no_secret(error: &OktaError, secrets: &[&str]) {
    for text in [error.to_string(), format!("{error:?}")] {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret:?} in {text:?}");
        }
    }
}

/// Mounts three pages of users; `joined` puts the self and next links in one header.
async fn mount_three_pages(server: &MockServer, joined: bool) {
    let base = server.uri();
    let page = |after: Option<&str>, next: Option<&str>, range| {
        let self_link = match after {
            Some(after) => format!("<{base}/api/v1/users?after={after}&limit=2>; rel=\"self\""),
            None => format!("<{base}/api/v1/users?limit=2>; rel=\"self\""),
        };
        let mut template = ResponseTemplate::new(200).set_body_json(users(range));
        let next_link = next.map(|next| {
            // A comma inside the URL must not split the link.
            format!("<{base}/api/v1/users?after={next}&limit=2&fields=id,status>; rel=\"next\"")
        });
        match (joined, next_link) {
            (true, Some(next_link)) => {
                template =
                    template.append_header("link", format!("{self_link}, {next_link}").as_str());
            }
            (false, Some(next_link)) => {
                template = template
                    .append_header("link", self_link.as_str())
                    .append_header("link", next_link.as_str());
            }
            (_, None) => template = template.append_header("link", self_link.as_str()),
        }
        template
    };
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .and(query_param_is_missing("after"))
        .respond_with(page(None, Some("00u1"), 0..2))
        .expect(1)
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .and(query_param("after", "00u1"))
        .and(query_param("fields", "id,status"))
        .respond_with(page(Some("00u1"), Some("00u3"), 2..4))
        .expect(1)
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .and(query_param("after", "00u3"))
        .respond_with(page(Some("00u3"), None, 4..5))
        .expect(1)
        .mount(server)
        .await;
}

#[tokio::test]
async fn sends_ssws_and_accept_json() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users/00u1"))
        .and(header("authorization", format!("SSWS {TOKEN}").as_str()))
        .and(header("accept", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "00u1"})))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server);
    assert!(!format!("{client:?}").contains(TOKEN));
    let user = client.get_json("/api/v1/users/00u1").await.expect("found");
    assert_eq!(user, Some(json!({"id": "00u1"})));
    assert!(
        client.first_server_date().is_some(),
        "the server sends Date"
    );
    let date = client.first_server_date().expect("a date");
    assert!((Utc::now() - date).num_seconds().abs() < 60);
}

#[tokio::test]
async fn follows_separate_link_headers_over_three_pages() {
    let server = MockServer::start().await;
    mount_three_pages(&server, false).await;
    let client = client(&server);
    let pages = read_all(&client, "/api/v1/users?limit=2")
        .await
        .expect("read");
    assert_eq!(pages.len(), 3);
    assert_eq!(ids(&pages), ["00u0", "00u1", "00u2", "00u3", "00u4"]);
    assert_eq!(client.requests().get("/api/v1/users"), Some(&3));
}

#[tokio::test]
async fn follows_a_comma_joined_link_header() {
    let server = MockServer::start().await;
    mount_three_pages(&server, true).await;
    let client = client(&server);
    let pages = read_all(&client, "/api/v1/users?limit=2")
        .await
        .expect("read");
    assert_eq!(ids(&pages), ["00u0", "00u1", "00u2", "00u3", "00u4"]);
}

#[tokio::test]
async fn stops_on_a_short_page_or_when_asked() {
    let server = MockServer::start().await;
    let base = server.uri();
    // System Log polling: there is always a next link.
    Mock::given(method("GET"))
        .and(path("/api/v1/logs"))
        .and(query_param_is_missing("after"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(users(0..3))
                .append_header(
                    "link",
                    format!("<{base}/api/v1/logs?after=a1>; rel=\"next\"").as_str(),
                ),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/logs"))
        .and(query_param("after", "a1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(users(3..4))
                .append_header(
                    "link",
                    format!("<{base}/api/v1/logs?after=a2>; rel=\"next\"").as_str(),
                ),
        )
        .mount(&server)
        .await;
    let client = client(&server);
    let mut pages = Vec::new();
    client
        .get_pages("/api/v1/logs?limit=3", Some(3), |items| {
            pages.push(items);
            Ok(true)
        })
        .await
        .expect("read");
    assert_eq!(ids(&pages), ["00u0", "00u1", "00u2", "00u3"]);
    assert_eq!(client.requests().get("/api/v1/logs"), Some(&2));

    let mut n_pages = 0;
    client
        .get_pages("/api/v1/logs?limit=3", None, |_| {
            n_pages += 1;
            Ok(false)
        })
        .await
        .expect("read");
    assert_eq!(n_pages, 1);
    assert_eq!(client.requests().get("/api/v1/logs"), Some(&3));

    // An error from on_page stops the read and is returned.
    let error = client
        .get_pages("/api/v1/logs?limit=3", None, |_| {
            Err(OktaError::InvalidResponse {
                url: "x".into(),
                message: "from the callback".into(),
            })
        })
        .await
        .expect_err("the callback failed");
    assert!(error.to_string().contains("from the callback"));
}

#[tokio::test]
async fn a_page_that_is_not_an_array_names_the_url() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"users": []})))
        .mount(&server)
        .await;
    let error = read_all(
        &client(&server),
        "/api/v1/users?limit=200&search=status%20eq%20%22ACTIVE%22",
    )
    .await
    .expect_err("not an array");
    assert!(
        matches!(error, OktaError::InvalidResponse { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "Okta sent an answer for /api/v1/users?limit=200&search=status%20eq%20%22ACTIVE%22 that \
         cannot be read: expected a JSON array of items, got an object"
    );
}

#[tokio::test]
async fn a_truncated_page_is_an_invalid_response() {
    let server = MockServer::start().await;
    let full = users(0..3).to_string();
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(&full.as_bytes()[..full.len() - 20], "application/json"),
        )
        .mount(&server)
        .await;
    let client = client(&server);
    let error = read_all(&client, "/api/v1/users?limit=200")
        .await
        .expect_err("truncated");
    let message = error.to_string();
    assert!(
        matches!(error, OktaError::InvalidResponse { .. }),
        "{error:?}"
    );
    assert!(message.contains("/api/v1/users?limit=200"), "{message}");
    assert!(message.contains("the JSON is cut off"), "{message}");
    // An unreadable page is not retried: the run stops.
    assert_eq!(client.requests().get("/api/v1/users"), Some(&1));
}

#[tokio::test]
async fn refuses_a_next_link_to_another_origin_or_back_to_the_same_page() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(users(0..1))
                .append_header(
                    "link",
                    "<https://evil.example.com/api/v1/users?after=x>; rel=\"next\"",
                ),
        )
        .mount(&server)
        .await;
    let error = read_all(&client(&server), "/api/v1/users")
        .await
        .expect_err("foreign");
    let message = error.to_string();
    assert!(
        message.contains("leaves the org (https://evil.example.com)"),
        "{message}"
    );
    assert!(message.contains("/api/v1/users"), "{message}");

    let server = MockServer::start().await;
    let base = server.uri();
    Mock::given(method("GET"))
        .and(path("/api/v1/groups"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(users(0..1))
                .append_header(
                    "link",
                    format!("<{base}/api/v1/groups?limit=1>; rel=\"next\"").as_str(),
                ),
        )
        .mount(&server)
        .await;
    let error = read_all(&client(&server), "/api/v1/groups?limit=1")
        .await
        .expect_err("a loop");
    assert!(
        error.to_string().contains("points back to the same page"),
        "{error}"
    );

    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/groups"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(users(0..1))
                .append_header("link", "/api/v1/groups?after=2; rel=\"next\""),
        )
        .mount(&server)
        .await;
    let error = read_all(&client(&server), "/api/v1/groups")
        .await
        .expect_err("bad header");
    assert!(
        error
            .to_string()
            .contains("bad link header: a link must start with <"),
        "{error}"
    );
}

#[tokio::test]
async fn a_429_waits_for_the_reset_then_succeeds() {
    let server = MockServer::start().await;
    let reset = unix_now() + 2;
    // Okta's concurrent-limit form: Limit and Remaining 0.
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("x-rate-limit-limit", "0")
                .insert_header("x-rate-limit-remaining", "0")
                .insert_header("x-rate-limit-reset", reset.to_string().as_str())
                .set_body_json(json!({
                    "errorCode": "E0000047",
                    "errorSummary": "API call exceeded rate limit due to too many requests.",
                    "errorCauses": []
                })),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .respond_with(ResponseTemplate::new(200).set_body_json(users(0..2)))
        .mount(&server)
        .await;
    let client = client(&server);
    let started = StdInstant::now();
    let pages = read_all(&client, "/api/v1/users")
        .await
        .expect("read after the wait");
    let elapsed = started.elapsed();
    assert_eq!(ids(&pages), ["00u0", "00u1"]);
    assert!(
        elapsed >= Duration::from_millis(950),
        "waited only {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(4), "waited {elapsed:?}");
    assert_eq!(client.requests().get("/api/v1/users"), Some(&2));
}

#[tokio::test]
async fn a_429_without_a_reset_backs_off_and_gives_up_after_the_retries() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .respond_with(ResponseTemplate::new(429).set_body_json(json!({"errorCode": "E0000047"})))
        .mount(&server)
        .await;
    let client = client_with(&server, OktaAuth::api_token(Secret::new(TOKEN)), 2);
    let started = StdInstant::now();
    let error = read_all(&client, "/api/v1/users?limit=200")
        .await
        .expect_err("rate-limited");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(error, OktaError::RateLimited { attempts: 3, .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("/api/v1/users?limit=200"),
        "{error}"
    );
    assert_eq!(client.requests().get("/api/v1/users"), Some(&3));
}

#[tokio::test]
async fn remaining_zero_makes_the_next_request_wait_for_the_reset() {
    let server = MockServer::start().await;
    let reset = unix_now() + 2;
    Mock::given(method("GET"))
        .and(path("/api/v1/users/00u1"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-rate-limit-limit", "600")
                .insert_header("x-rate-limit-remaining", "0")
                .insert_header("x-rate-limit-reset", reset.to_string().as_str())
                .set_body_json(json!({"id": "00u1"})),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users/00u2/groups"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("x-rate-limit-limit", "600")
                .insert_header("x-rate-limit-remaining", "599")
                .insert_header("x-rate-limit-reset", reset.to_string().as_str())
                .set_body_json(json!([])),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/groups"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .mount(&server)
        .await;
    let client = client(&server);
    client.get_json("/api/v1/users/00u1").await.expect("first");

    // Another bucket is not held up.
    let started = StdInstant::now();
    read_all(&client, "/api/v1/groups")
        .await
        .expect("another bucket");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    // The same bucket (another user, through a clone) waits for the reset.
    let clone = client.clone();
    let started = StdInstant::now();
    clone
        .get_json("/api/v1/users/00u1")
        .await
        .expect("after the wait");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(950),
        "waited only {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(4), "waited {elapsed:?}");

    // Plenty remaining: no wait.
    let started = StdInstant::now();
    read_all(&client, "/api/v1/users/00u2/groups")
        .await
        .expect("no wait");
    read_all(&client, "/api/v1/users/00u2/groups")
        .await
        .expect("no wait");
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn server_errors_are_retried() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .respond_with(ResponseTemplate::new(500).set_body_json(
            json!({"errorCode": "E0000009", "errorSummary": "Internal Server Error"}),
        ))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .respond_with(ResponseTemplate::new(200).set_body_json(users(0..1)))
        .mount(&server)
        .await;
    let client = client(&server);
    let pages = read_all(&client, "/api/v1/users")
        .await
        .expect("read after two 500s");
    assert_eq!(ids(&pages), ["00u0"]);
    assert_eq!(client.requests().get("/api/v1/users"), Some(&3));
}

#[tokio::test]
async fn server_errors_beyond_the_retries_name_the_url() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .respond_with(ResponseTemplate::new(502).set_body_string("<html>Bad Gateway</html>"))
        .mount(&server)
        .await;
    let client = client(&server);
    let error = read_all(&client, "/api/v1/users?limit=200")
        .await
        .expect_err("down");
    assert!(
        matches!(
            error,
            OktaError::Unavailable {
                status: 502,
                attempts: 4,
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message
            .starts_with("Okta is unavailable for /api/v1/users?limit=200 (502) after 4 attempts"),
        "{message}"
    );
    assert!(message.contains("Bad Gateway"), "{message}");
    assert_eq!(client.requests().get("/api/v1/users"), Some(&4));
}

#[tokio::test]
async fn transport_errors_are_retried_then_reported() {
    // A port that nobody listens on: connection refused.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("an address").port();
    drop(listener);
    let url = Url::parse(&format!("http://127.0.0.1:{port}")).expect("valid URL");
    let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(20), 1);
    let client = OktaClient::with_backoff(
        url,
        OktaAuth::api_token(Secret::new(TOKEN)),
        Duration::from_secs(2),
        backoff,
    )
    .expect("the client builds");
    let error = client
        .get_json("/api/v1/users/00u1")
        .await
        .expect_err("unreachable");
    assert!(matches!(error, OktaError::Transport { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with("cannot reach Okta for /api/v1/users/00u1: "),
        "{error}"
    );
    assert_eq!(client.requests().get("/api/v1/users/00u1"), Some(&2));
    assert_no_secret(&error, &[TOKEN]);
}

#[tokio::test]
async fn two_401s_are_unauthorized_naming_the_token() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "errorCode": "E0000011", "errorSummary": "Invalid token provided", "errorCauses": []
        })))
        .mount(&server)
        .await;
    let client = client(&server);
    let error = read_all(&client, "/api/v1/users?limit=200")
        .await
        .expect_err("unauthorized");
    assert!(
        matches!(error, OktaError::Unauthorized { status: 401, .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "Okta did not accept source.okta.token for /api/v1/users?limit=200 (401: E0000011: \
         Invalid token provided); check that it is current, not revoked, and belongs to this org"
    );
    assert_eq!(client.requests().get("/api/v1/users"), Some(&2));
    assert_no_secret(&error, &[TOKEN]);
}

#[tokio::test]
async fn forbidden_names_the_scope_the_endpoint_needs() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_type": "Bearer", "expires_in": 3600, "access_token": "access-SECRET"
        })))
        .mount(&server)
        .await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({
            "errorCode": "E0000006",
            "errorSummary": "You do not have permission to perform the requested action",
            "errorCauses": []
        })))
        .mount(&server)
        .await;
    let key = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/okta/ec-pkcs8.pem"
    ))
    .expect("fixture");
    let auth = OktaAuth::service_app(
        &org(&server),
        "0oa9app".to_owned(),
        Secret::new(key),
        vec!["okta.users.read".to_owned()],
    )
    .expect("the key loads");
    let client = client_with(&server, auth, 3);
    for (path, scope) in [
        ("/api/v1/users?limit=200", "okta.users.read"),
        ("/api/v1/groups?limit=200", "okta.groups.read"),
        ("/api/v1/groups/00g1/users", "okta.groups.read"),
        ("/api/v1/logs?since=x", "okta.logs.read"),
    ] {
        let error = read_all(&client, path).await.expect_err("forbidden");
        let message = error.to_string();
        assert!(matches!(error, OktaError::Forbidden { .. }), "{error:?}");
        assert!(
            message.contains(&format!(
                "Okta refused {path} to the service app 0oa9app (403: E0000006"
            )),
            "{message}"
        );
        assert!(
            message.contains(&format!("grant the scope {scope} to the service app")),
            "{message}"
        );
        assert_no_secret(&error, &["access-SECRET"]);
    }
    let error = client
        .post_json(
            "/api/v1/users/00u1",
            &json!({"profile": {"socialTalentId": "1"}}),
        )
        .await
        .expect_err("forbidden");
    assert!(
        error
            .to_string()
            .contains("grant the scope okta.users.manage"),
        "{error}"
    );
    // One token for all of it: a 403 does not drop the token.
    let token_calls = server
        .received_requests()
        .await
        .expect("recording")
        .iter()
        .filter(|request| request.url.path() == "/oauth2/v1/token")
        .count();
    assert_eq!(token_calls, 1);

    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({"errorCode": "E0000006"})))
        .mount(&server)
        .await;
    let error = read_all(
        &client_with(&server, OktaAuth::api_token(Secret::new(TOKEN)), 0),
        "/api/v1/logs",
    )
    .await
    .expect_err("forbidden");
    let message = error.to_string();
    assert!(message.contains("source.okta.token"), "{message}");
    assert!(
        message.contains("admin role of the user who created it"),
        "{message}"
    );
    assert!(message.contains("okta.logs.read"), "{message}");
}

#[tokio::test]
async fn service_app_token_is_cached_across_requests_and_renewed_after_a_401() {
    let server = MockServer::start().await;
    let n_tokens = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&n_tokens);
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/token"))
        .respond_with(move |_: &Request| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            ResponseTemplate::new(200).set_body_json(json!({
                "token_type": "Bearer", "expires_in": 3600, "access_token": format!("access-SECRET-{n}")
            }))
        })
        .mount(&server)
        .await;
    // The server no longer accepts the first token after three calls.
    let api_calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&api_calls);
    Mock::given(method("GET"))
        .and(path("/api/v1/users/00u1"))
        .respond_with(move |request: &Request| {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            let authorization = request
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if n > 3 && authorization == "Bearer access-SECRET-1" {
                ResponseTemplate::new(401).set_body_json(
                    json!({"errorCode": "E0000011", "errorSummary": "Invalid token provided"}),
                )
            } else {
                ResponseTemplate::new(200).set_body_json(json!({"id": "00u1"}))
            }
        })
        .mount(&server)
        .await;
    let key = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/okta/rsa-pkcs8.pem"
    ))
    .expect("fixture");
    let auth = OktaAuth::service_app(
        &org(&server),
        "0oa9app".to_owned(),
        Secret::new(key),
        vec!["okta.users.read".to_owned()],
    )
    .expect("the key loads");
    let client = client_with(&server, auth, 3);
    for _ in 0..3 {
        client.get_json("/api/v1/users/00u1").await.expect("found");
    }
    assert_eq!(
        n_tokens.load(Ordering::SeqCst),
        1,
        "one token for three calls"
    );

    // A 401 drops the token; the call is sent again with a new one.
    assert_eq!(
        client.get_json("/api/v1/users/00u1").await.expect("found"),
        Some(json!({"id": "00u1"}))
    );
    assert_eq!(n_tokens.load(Ordering::SeqCst), 2);
    assert_eq!(client.requests().get("/api/v1/users/00u1"), Some(&5));
}

#[tokio::test]
async fn a_resource_server_dpop_nonce_challenge_is_answered() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth2/v1/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "token_type": "DPoP", "expires_in": 3600, "access_token": "dpop-SECRET"
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users"))
        .respond_with(|request: &Request| {
            let proof = request.headers.get("dpop").and_then(|v| v.to_str().ok()).unwrap_or("");
            let claims: Value = proof
                .split('.')
                .nth(1)
                .and_then(|part| base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, part).ok())
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                .unwrap_or(Value::Null);
            if claims["nonce"] == "server-nonce" {
                ResponseTemplate::new(200).set_body_json(json!([{"id": "00u1"}]))
            } else {
                ResponseTemplate::new(401)
                    .insert_header("www-authenticate", "DPoP error=\"use_dpop_nonce\", error_description=\"Resource server requires nonce in DPoP proof\"")
                    .insert_header("dpop-nonce", "server-nonce")
            }
        })
        .mount(&server)
        .await;
    let key = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/okta/ec-sec1.pem"
    ))
    .expect("fixture");
    let auth = OktaAuth::service_app(
        &org(&server),
        "0oa9app".to_owned(),
        Secret::new(key),
        vec!["okta.users.read".to_owned()],
    )
    .expect("the key loads");
    let client = client_with(&server, auth, 0);
    let pages = read_all(&client, "/api/v1/users?limit=200")
        .await
        .expect("read after the nonce");
    assert_eq!(ids(&pages), ["00u1"]);
    assert_eq!(client.requests().get("/api/v1/users"), Some(&2));
    let api_requests: Vec<Request> = server
        .received_requests()
        .await
        .expect("recording")
        .into_iter()
        .filter(|request| request.url.path() == "/api/v1/users")
        .collect();
    for request in &api_requests {
        assert_eq!(
            request.headers.get(AUTHORIZATION).expect("Authorization"),
            "DPoP dpop-SECRET"
        );
    }
}

#[tokio::test]
async fn get_json_is_none_on_404_and_post_json_sends_the_body() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/users/gone"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({
            "errorCode": "E0000007", "errorSummary": "Not found: Resource not found: gone (User)"
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/users/00u1"))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({"profile": {"socialTalentId": "st-1"}})))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "00u1", "profile": {"socialTalentId": "st-1"}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/users/bad"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({
            "errorCode": "E0000001",
            "errorSummary": "Api validation failed: profile",
            "errorCauses": [{"errorSummary": "Property name socialTalentId is not defined in profile"}]
        })))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v1/users/gone"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let client = client(&server);
    assert_eq!(
        client
            .get_json("/api/v1/users/gone")
            .await
            .expect("no error"),
        None
    );
    let answer = client
        .post_json(
            "/api/v1/users/00u1",
            &json!({"profile": {"socialTalentId": "st-1"}}),
        )
        .await
        .expect("posted");
    assert_eq!(answer["profile"]["socialTalentId"], "st-1");

    let error = client
        .post_json(
            "/api/v1/users/bad",
            &json!({"profile": {"socialTalentId": "st-1"}}),
        )
        .await
        .expect_err("rejected");
    assert!(
        matches!(&error, OktaError::Rejected { status: 400, error_code: Some(code), .. } if code == "E0000001"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "Okta rejected /api/v1/users/bad (400 E0000001: Api validation failed: profile (Property \
         name socialTalentId is not defined in profile))"
    );
    let error = client
        .post_json("/api/v1/users/gone", &json!({}))
        .await
        .expect_err("gone");
    assert_eq!(
        error.to_string(),
        "not found in Okta: /api/v1/users/gone: Not Found"
    );

    let error = client
        .get_json("api/v1/users")
        .await
        .expect_err("no leading slash");
    assert!(matches!(error, OktaError::InvalidUrl { .. }), "{error:?}");
    let error = client
        .get_json("//evil.example.com/x")
        .await
        .expect_err("another host");
    assert!(matches!(error, OktaError::InvalidUrl { .. }), "{error:?}");
}

#[test]
fn request_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let url = Url::parse("https://example.okta.com").expect("valid URL");
    let client = OktaClient::new(
        url,
        OktaAuth::api_token(Secret::new(TOKEN)),
        Duration::from_secs(1),
        0,
    )
    .expect("the client builds");
    let mut n_items = 0;
    let pages = client.get_pages("/api/v1/users", None, |items| {
        n_items += items.len();
        Ok(true)
    });
    assert_send(&pages);
    assert_send(&client.get_json("/api/v1/users/00u1"));
    assert_send(&client.post_json("/api/v1/users/00u1", &Value::Null));
}

#[test]
fn parses_link_headers() {
    let links = parse_link_header(
        "<https://o.okta.com/api/v1/users?limit=2>; rel=\"self\", \
         <https://o.okta.com/api/v1/users?after=a,b&limit=2>; rel=\"next\"",
    )
    .expect("valid");
    assert_eq!(
        links,
        [
            Link {
                target: "https://o.okta.com/api/v1/users?limit=2".into(),
                rels: vec!["self".into()]
            },
            Link {
                target: "https://o.okta.com/api/v1/users?after=a,b&limit=2".into(),
                rels: vec!["next".into()]
            },
        ]
    );
    let links = parse_link_header("<a>;rel=next;title=\"x, \\\"y\\\"\" ,<b>; rel=\"prev last\"")
        .expect("valid");
    assert_eq!(links[0].rels, ["next"]);
    assert_eq!(links[1].rels, ["prev", "last"]);
    assert_eq!(parse_link_header("").expect("empty"), []);
    assert!(parse_link_header("https://x; rel=next").is_err());
    assert!(parse_link_header("<https://x; rel=next").is_err());
    assert!(parse_link_header("<a>; rel=\"next").is_err());
    assert!(parse_link_header("<a> junk").is_err());
}

#[test]
fn rate_limit_threshold_and_reset() {
    let low = |limit: Option<u64>, remaining: Option<u64>| {
        RateLimit {
            limit,
            remaining,
            reset: None,
        }
        .is_low()
    };
    assert!(low(Some(600), Some(12)));
    assert!(!low(Some(600), Some(13)));
    assert!(low(Some(50), Some(1)));
    assert!(!low(Some(50), Some(2)));
    assert!(low(Some(0), Some(0)));
    assert!(low(None, Some(1)));
    assert!(!low(Some(600), None));

    let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    let mut headers = HeaderMap::new();
    headers.insert("x-rate-limit-reset", "1750000030".parse().expect("valid"));
    let rate = RateLimit::from_headers(&headers);
    assert_eq!(
        rate.until_reset(&headers, now),
        Some(Duration::from_secs(30))
    );
    // The server's Date wins over the local clock.
    headers.insert(
        DATE,
        httpdate::fmt_http_date(now + Duration::from_secs(20))
            .parse()
            .expect("valid"),
    );
    assert_eq!(
        rate.until_reset(&headers, now),
        Some(Duration::from_secs(10))
    );
    // A reset in the past or now: no wait.
    headers.insert(
        DATE,
        httpdate::fmt_http_date(now + Duration::from_secs(30))
            .parse()
            .expect("valid"),
    );
    assert_eq!(rate.until_reset(&headers, now), None);
    // A far reset is not capped here: the 429 path fails the run when it is longer than one
    // wait may last, naming it.
    headers.insert("x-rate-limit-reset", "1760000000".parse().expect("valid"));
    let rate = RateLimit::from_headers(&headers);
    let far = rate
        .until_reset(&headers, now)
        .expect("a reset in the future");
    assert!(far > MAX_RATE_LIMIT_WAIT, "{far:?}");
}

#[test]
fn buckets_and_scopes() {
    assert_eq!(bucket_of("/api/v1/users"), "/api/v1/users");
    assert_eq!(bucket_of("/api/v1/users/00u1"), "/api/v1/users/*");
    assert_eq!(
        bucket_of("/api/v1/users/00u1/groups"),
        "/api/v1/users/*/groups"
    );
    assert_eq!(
        bucket_of("/api/v1/groups/00g1/users"),
        "/api/v1/groups/*/users"
    );
    assert_eq!(bucket_of("/oauth2/v1/token"), "/oauth2/v1/token");
    assert_eq!(
        needed_scope(&Method::GET, "/api/v1/users/00u1/groups"),
        Some("okta.users.read")
    );
    assert_eq!(
        needed_scope(&Method::POST, "/api/v1/users/00u1"),
        Some("okta.users.manage")
    );
    assert_eq!(
        needed_scope(&Method::GET, "/api/v1/groups"),
        Some("okta.groups.read")
    );
    assert_eq!(
        needed_scope(&Method::GET, "/api/v1/logs"),
        Some("okta.logs.read")
    );
    assert_eq!(needed_scope(&Method::GET, "/api/v1/usersx"), None);
    assert_eq!(needed_scope(&Method::GET, "/api/v1/apps"), None);
}
