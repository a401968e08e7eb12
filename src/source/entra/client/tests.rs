//! Tests of the Graph client against wiremock (a fake token endpoint and a fake Graph on one
//! server), on the real clock (reqwest needs real sockets, so tokio's paused clock cannot be
//! used); the waits are kept under a second.

use std::sync::atomic::AtomicUsize;
use std::time::Instant as StdInstant;

use serde_json::json;
use wiremock::matchers::{body_json, header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::*;
use crate::config::Secret;

const TENANT: &str = "8f1e1f5c-0b7a-4c42-9a5e-3d2c1b0a9f8e";
const CLIENT_ID: &str = "3c2b1a09-8f7e-4d6c-b5a4-392817161514";
const SECRET: &str = "Xy8Q~client-SECRET-value.abc";
const ACCESS_TOKEN: &str = "eyJ0eXAi.access-SECRET-token";

fn base(server: &MockServer) -> Url {
    Url::parse(&server.uri()).expect("the mock server's URL parses")
}

fn token_path() -> String {
    format!("/{TENANT}/oauth2/v2.0/token")
}

fn auth(server: &MockServer) -> GraphAuth {
    GraphAuth::client_secret(
        &base(server),
        TENANT,
        CLIENT_ID,
        Secret::new(SECRET),
        format!("{}/.default", server.uri()),
    )
}

fn client_with(server: &MockServer, max_retries: u32) -> GraphClient {
    let backoff = Backoff::new(
        Duration::from_millis(20),
        Duration::from_millis(100),
        max_retries,
    );
    GraphClient::with_backoff(base(server), auth(server), Duration::from_secs(10), backoff)
        .expect("the client builds")
}

fn client(server: &MockServer) -> GraphClient {
    client_with(server, 3)
}

/// Mounts a token endpoint that hands out `ACCESS_TOKEN-1`, `ACCESS_TOKEN-2`, …; returns the
/// counter of tokens handed out.
async fn mount_tokens(server: &MockServer) -> Arc<AtomicUsize> {
    let n_tokens = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&n_tokens);
    Mock::given(method("POST"))
        .and(path(token_path()))
        .respond_with(move |_: &Request| {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            ResponseTemplate::new(200).set_body_json(json!({
                "token_type": "Bearer", "expires_in": 3599, "access_token": format!("{ACCESS_TOKEN}-{n}")
            }))
        })
        .mount(server)
        .await;
    n_tokens
}

fn users(range: std::ops::Range<usize>) -> Vec<Value> {
    range
        .map(|n| json!({"id": format!("u{n}"), "userPrincipalName": format!("u{n}@contoso.com")}))
        .collect()
}

fn ids(pages: &[Vec<Value>]) -> Vec<String> {
    pages
        .iter()
        .flatten()
        .map(|user| user["id"].as_str().expect("an id").to_owned())
        .collect()
}

/// Reads every page of `path_or_url`; returns the pages and the delta link.
async fn read_all(
    client: &GraphClient,
    path_or_url: &str,
) -> Result<(Vec<Vec<Value>>, Option<String>), GraphError> {
    let mut pages = Vec::new();
    let delta_link = client
        .get_pages(path_or_url, |items| {
            pages.push(items);
            Ok(true)
        })
        .await?;
    Ok((pages, delta_link))
}

/// Asserts that neither the error's `Display` nor its `Debug` holds a secret.
fn assert_no_secret(error: &GraphError) {
    for text in [error.to_string(), format!("{error:?}")] {
        for secret in [SECRET, ACCESS_TOKEN] {
            assert!(!text.contains(secret), "{secret:?} in {text:?}");
        }
    }
}

fn graph_error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "innerError": {
        "date": "2025-01-14T10:11:12", "request-id": "94fb3b52-0000-0000-0000-000000000000",
        "client-request-id": "94fb3b52-0000-0000-0000-000000000000"
    }}})
}

#[tokio::test]
async fn sends_the_bearer_token_and_accept_json_with_one_token_for_three_calls() {
    let server = MockServer::start().await;
    let n_tokens = mount_tokens(&server).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/u1"))
        .and(query_param("$select", "id,mail"))
        .and(header(
            "authorization",
            format!("Bearer {ACCESS_TOKEN}-1").as_str(),
        ))
        .and(header("accept", "application/json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "u1"})))
        .expect(3)
        .mount(&server)
        .await;
    let client = client(&server);
    for _ in 0..3 {
        let user = client
            .get_json("/v1.0/users/u1?$select=id,mail")
            .await
            .expect("found");
        assert_eq!(user, Some(json!({"id": "u1"})));
    }
    assert_eq!(
        n_tokens.load(Ordering::SeqCst),
        1,
        "one token for three calls"
    );
    assert_eq!(client.requests().get("/v1.0/users/u1"), Some(&3));
    assert_eq!(client.requests().len(), 1, "token requests are not counted");
    let debug = format!("{client:?}");
    assert!(
        !debug.contains(SECRET) && !debug.contains(ACCESS_TOKEN),
        "{debug}"
    );
}

#[tokio::test]
async fn follows_next_links_to_the_delta_link_then_reads_the_delta_link() {
    let server = MockServer::start().await;
    mount_tokens(&server).await;
    let uri = server.uri();
    let page = |items: Vec<Value>, link: (&str, String)| {
        let mut body = json!({
            "@odata.context": format!("{uri}/v1.0/$metadata#users(id,userPrincipalName)"),
            "value": items,
        });
        body[link.0] = json!(link.1);
        ResponseTemplate::new(200).set_body_json(body)
    };
    Mock::given(method("GET"))
        .and(path("/v1.0/users/delta"))
        .and(query_param(
            "$select",
            "id,userPrincipalName,accountEnabled",
        ))
        .and(query_param_is_missing("$skiptoken"))
        .and(query_param_is_missing("$deltatoken"))
        .respond_with(page(
            users(0..2),
            (
                "@odata.nextLink",
                format!(
                    "{uri}/v1.0/users/delta?$skiptoken=page2-pAgE2-{}",
                    "x".repeat(300)
                ),
            ),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/delta"))
        .and(query_param(
            "$skiptoken",
            format!("page2-pAgE2-{}", "x".repeat(300)).as_str(),
        ))
        .respond_with(page(
            users(2..4),
            (
                "@odata.nextLink",
                format!("{uri}/v1.0/users/delta?$skiptoken=page3"),
            ),
        ))
        .expect(1)
        .mount(&server)
        .await;
    // A page may be empty.
    Mock::given(method("GET"))
        .and(path("/v1.0/users/delta"))
        .and(query_param("$skiptoken", "page3"))
        .respond_with(page(
            Vec::new(),
            (
                "@odata.deltaLink",
                format!("{uri}/v1.0/users/delta?$deltatoken=round2"),
            ),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/delta"))
        .and(query_param("$deltatoken", "round2"))
        .respond_with(page(
            vec![json!({"id": "u1", "@removed": {"reason": "changed"}})],
            (
                "@odata.deltaLink",
                format!("{uri}/v1.0/users/delta?$deltatoken=round3"),
            ),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server);
    let (pages, delta_link) = read_all(
        &client,
        "/v1.0/users/delta?$select=id,userPrincipalName,accountEnabled",
    )
    .await
    .expect("read");
    assert_eq!(pages.len(), 3);
    assert_eq!(ids(&pages), ["u0", "u1", "u2", "u3"]);
    let delta_link = delta_link.expect("the last page has a delta link");
    assert_eq!(
        delta_link,
        format!("{uri}/v1.0/users/delta?$deltatoken=round2")
    );

    // The next round starts from the stored delta link, an absolute URL.
    let (pages, next_delta) = read_all(&client, &delta_link).await.expect("incremental");
    assert_eq!(
        pages,
        [vec![json!({"id": "u1", "@removed": {"reason": "changed"}})]]
    );
    assert_eq!(
        next_delta,
        Some(format!("{uri}/v1.0/users/delta?$deltatoken=round3"))
    );
    assert_eq!(client.requests().get("/v1.0/users/delta"), Some(&4));
}

#[tokio::test]
async fn a_list_without_links_ends_and_a_page_with_both_links_follows_the_next_one() {
    let server = MockServer::start().await;
    mount_tokens(&server).await;
    let uri = server.uri();
    Mock::given(method("GET"))
        .and(path("/v1.0/groups"))
        .and(query_param_is_missing("$skiptoken"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "value": users(0..1),
            "@odata.nextLink": format!("{uri}/v1.0/groups?$skiptoken=2"),
            "@odata.deltaLink": format!("{uri}/v1.0/groups?$deltatoken=bogus"),
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/groups"))
        .and(query_param("$skiptoken", "2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": users(1..2)})))
        .mount(&server)
        .await;
    let client = client(&server);
    let (pages, delta_link) = read_all(&client, "/v1.0/groups?$select=id,displayName")
        .await
        .expect("read");
    assert_eq!(ids(&pages), ["u0", "u1"]);
    assert_eq!(delta_link, None);

    // on_page may stop the read; then there is no delta link.
    let mut n_pages = 0;
    let delta_link = client
        .get_pages("/v1.0/groups", |_| {
            n_pages += 1;
            Ok(false)
        })
        .await
        .expect("read");
    assert_eq!((n_pages, delta_link), (1, None));
    // An error from on_page stops the read and is returned.
    let error = client
        .get_pages("/v1.0/groups", |_| {
            Err(GraphError::InvalidResponse {
                url: "x".into(),
                message: "from the callback".into(),
            })
        })
        .await
        .expect_err("the callback failed");
    assert!(error.to_string().contains("from the callback"));
}

#[tokio::test]
async fn refuses_links_and_urls_off_graph() {
    let server = MockServer::start().await;
    mount_tokens(&server).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "value": users(0..1),
            "@odata.nextLink": "https://evil.example.com/v1.0/users?$skiptoken=x",
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/delta"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "value": [],
            "@odata.deltaLink": "https://evil.example.com/v1.0/users/delta?$deltatoken=x",
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/groups"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "value": [],
            "@odata.nextLink": format!("{}/v1.0/groups?$top=1", server.uri()),
        })))
        .mount(&server)
        .await;
    let client = client(&server);
    let mut delivered = 0;
    let error = client
        .get_pages("/v1.0/users?$top=999", |items| {
            delivered += items.len();
            Ok(true)
        })
        .await
        .expect_err("a foreign next link");
    assert!(
        matches!(error, GraphError::InvalidResponse { .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "Microsoft Graph sent an answer for /v1.0/users?$top=999 that cannot be read: the \
         @odata.nextLink leaves Microsoft Graph (https://evil.example.com), refusing to follow it"
    );
    assert_eq!(delivered, 0, "a page with a bad link is not delivered");

    let error = read_all(&client, "/v1.0/users/delta")
        .await
        .expect_err("a foreign delta link");
    assert!(
        error
            .to_string()
            .contains("the @odata.deltaLink leaves Microsoft Graph"),
        "{error}"
    );

    let error = read_all(&client, "/v1.0/groups?$top=1")
        .await
        .expect_err("a loop");
    assert!(
        error.to_string().contains("points back to the same page"),
        "{error}"
    );

    // A stored link, or a path, that is not on graph_url is not requested at all.
    let before = client.requests();
    for bad in [
        "https://evil.example.com/v1.0/users/delta?$deltatoken=x",
        "//evil.example.com/v1.0/users",
        "v1.0/users",
    ] {
        let error = read_all(&client, bad).await.expect_err("refused");
        assert!(
            matches!(error, GraphError::InvalidUrl { .. }),
            "{bad}: {error:?}"
        );
    }
    let error = client
        .get_json("https://evil.example.com/v1.0/users/u1")
        .await
        .expect_err("refused");
    assert!(
        error
            .to_string()
            .contains("refusing to send the access token there"),
        "{error}"
    );
    assert_eq!(client.requests(), before);
}

#[tokio::test]
async fn an_expired_delta_token_is_sync_state_expired_and_not_retried() {
    let server = MockServer::start().await;
    mount_tokens(&server).await;
    // The documented form: 400 with the code syncStateNotFound.
    Mock::given(method("GET"))
        .and(path("/v1.0/users/delta"))
        .and(query_param("$deltatoken", "expired"))
        .respond_with(ResponseTemplate::new(400).set_body_json(graph_error(
            "syncStateNotFound",
            "The sync state generation is not found. The delta token is expired and data must be synchronized again.",
        )))
        .mount(&server)
        .await;
    // Other spellings: another case, in the innerError, or only in the message.
    Mock::given(method("GET"))
        .and(path("/v1.0/users/delta"))
        .and(query_param("$deltatoken", "inner"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "code": "BadRequest", "message": "Bad request.",
            "innerError": {"code": "SyncStateNotFound", "request-id": "r"}
        }})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/delta"))
        .and(query_param("$deltatoken", "message"))
        .respond_with(ResponseTemplate::new(400).set_body_json(graph_error(
            "Request_BadRequest",
            "SYNCSTATENOTFOUND: generation=149",
        )))
        .mount(&server)
        .await;
    // The reset form: 410 Gone with a Location to restart from.
    Mock::given(method("GET"))
        .and(path("/v1.0/users/delta"))
        .and(query_param("$deltatoken", "gone"))
        .respond_with(ResponseTemplate::new(410).insert_header(
            "location",
            format!("{}/v1.0/users/delta?$deltatoken=", server.uri()).as_str(),
        ))
        .mount(&server)
        .await;
    let client = client(&server);
    let uri = server.uri();
    for (token, status) in [
        ("expired", 400),
        ("inner", 400),
        ("message", 400),
        ("gone", 410),
    ] {
        let url = format!("{uri}/v1.0/users/delta?$deltatoken={token}");
        let error = read_all(&client, &url).await.expect_err("expired");
        assert!(
            matches!(&error, GraphError::SyncStateExpired { status: s, url, .. } if *s == status && url.ends_with(token)),
            "{token}: {error:?}"
        );
        assert!(
            error.to_string().contains("a full read is needed"),
            "{error}"
        );
    }
    let error = read_all(
        &client,
        &format!("{uri}/v1.0/users/delta?$deltatoken=expired"),
    )
    .await
    .expect_err("expired");
    assert_eq!(
        error.to_string(),
        "Microsoft Graph no longer knows the delta link /v1.0/users/delta?$deltatoken=expired \
         (400: syncStateNotFound: The sync state generation is not found. The delta token is \
         expired and data must be synchronized again.); a full read is needed"
    );
    assert_eq!(
        client.requests().get("/v1.0/users/delta"),
        Some(&5),
        "one request each: not retried"
    );
}

#[tokio::test]
async fn a_429_waits_for_a_fractional_retry_after_then_succeeds() {
    let server = MockServer::start().await;
    mount_tokens(&server).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/delta"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "0.5")
                .set_body_json(graph_error("TooManyRequests", "Please retry again later.")),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/delta"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "value": users(0..1),
            "@odata.deltaLink": format!("{}/v1.0/users/delta?$deltatoken=d", server.uri()),
        })))
        .mount(&server)
        .await;
    // Retries are slow by default, so that only the Retry-After can make this quick.
    let backoff = Backoff::new(Duration::from_secs(5), Duration::from_secs(5), 3);
    let client = GraphClient::with_backoff(
        base(&server),
        auth(&server),
        Duration::from_secs(10),
        backoff,
    )
    .expect("the client builds");
    let started = StdInstant::now();
    let (pages, delta_link) = read_all(&client, "/v1.0/users/delta")
        .await
        .expect("read after the wait");
    let elapsed = started.elapsed();
    assert_eq!(ids(&pages), ["u0"]);
    assert!(delta_link.is_some());
    assert!(
        elapsed >= Duration::from_millis(500),
        "waited only {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(2), "waited {elapsed:?}");
    assert_eq!(client.requests().get("/v1.0/users/delta"), Some(&2));
}

#[tokio::test]
async fn throttling_beyond_the_retries_is_throttled_with_graphs_reason() {
    let server = MockServer::start().await;
    let n_tokens = mount_tokens(&server).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "0")
                .insert_header("x-ms-throttle-information", "ResourceUnitLimitExceeded")
                .insert_header(
                    "x-ms-throttle-scope",
                    "Tenant_Application/ReadWrite/app/tenant",
                )
                .set_body_json(graph_error("TooManyRequests", "Please retry again later.")),
        )
        .mount(&server)
        .await;
    let client = client_with(&server, 2);
    let error = read_all(&client, "/v1.0/users?$top=999")
        .await
        .expect_err("throttled");
    assert!(
        matches!(error, GraphError::Throttled { attempts: 3, .. }),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "Microsoft Graph kept throttling /v1.0/users?$top=999 (429) after 3 attempts: \
         TooManyRequests: Please retry again later. [ResourceUnitLimitExceeded, scope \
         Tenant_Application/ReadWrite/app/tenant]; lower the load on this tenant or run at a \
         quieter time"
    );
    assert_eq!(client.requests().get("/v1.0/users"), Some(&3));
    assert_eq!(n_tokens.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn two_503s_then_success() {
    let server = MockServer::start().await;
    mount_tokens(&server).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users"))
        .respond_with(
            ResponseTemplate::new(503)
                .insert_header("retry-after", "0.1")
                .set_body_json(graph_error("serviceNotAvailable", "Service unavailable.")),
        )
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"value": users(0..1)})))
        .mount(&server)
        .await;
    let client = client(&server);
    let started = StdInstant::now();
    let (pages, _) = read_all(&client, "/v1.0/users")
        .await
        .expect("read after two 503s");
    assert_eq!(ids(&pages), ["u0"]);
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(client.requests().get("/v1.0/users"), Some(&3));
}

#[tokio::test]
async fn server_errors_beyond_the_retries_name_the_url_and_501_is_not_retried() {
    let server = MockServer::start().await;
    mount_tokens(&server).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users"))
        .respond_with(ResponseTemplate::new(502).set_body_string("<html>Bad Gateway</html>"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/delta"))
        .respond_with(ResponseTemplate::new(501).set_body_json(graph_error(
            "NotImplemented",
            "This operation target is not yet supported.",
        )))
        .mount(&server)
        .await;
    let client = client(&server);
    let error = read_all(&client, "/v1.0/users?$select=id")
        .await
        .expect_err("down");
    assert!(
        matches!(
            error,
            GraphError::Unavailable {
                status: 502,
                attempts: 4,
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with(
            "Microsoft Graph is unavailable for /v1.0/users?$select=id (502) after 4 attempts"
        ),
        "{message}"
    );
    assert!(message.contains("Bad Gateway"), "{message}");
    assert_eq!(client.requests().get("/v1.0/users"), Some(&4));

    let error = read_all(&client, "/v1.0/users/delta?$select=skills")
        .await
        .expect_err("not implemented");
    assert_eq!(
        error.to_string(),
        "Microsoft Graph rejected /v1.0/users/delta?$select=skills (501 NotImplemented: This \
         operation target is not yet supported.)"
    );
    assert_eq!(client.requests().get("/v1.0/users/delta"), Some(&1));
}

#[tokio::test]
async fn transport_errors_are_retried_then_reported() {
    // A port that nobody listens on: connection refused, for the API and the token endpoint.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let port = listener.local_addr().expect("an address").port();
    drop(listener);
    let url = Url::parse(&format!("http://127.0.0.1:{port}")).expect("valid URL");
    let token_server = MockServer::start().await;
    mount_tokens(&token_server).await;
    let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(20), 1);
    let auth = GraphAuth::client_secret(
        &base(&token_server),
        TENANT,
        CLIENT_ID,
        Secret::new(SECRET),
        "https://graph.microsoft.com/.default".to_owned(),
    );
    let client = GraphClient::with_backoff(url.clone(), auth, Duration::from_secs(2), backoff)
        .expect("the client builds");
    let error = client
        .get_json("/v1.0/users/u1")
        .await
        .expect_err("unreachable");
    assert!(matches!(error, GraphError::Transport { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with("cannot reach Microsoft Graph for /v1.0/users/u1: "),
        "{error}"
    );
    assert_eq!(client.requests().get("/v1.0/users/u1"), Some(&2));
    assert_no_secret(&error);

    // An unreachable token endpoint is retried too, then reported as an auth error.
    let backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(20), 1);
    let auth = GraphAuth::client_secret(
        &url,
        TENANT,
        CLIENT_ID,
        Secret::new(SECRET),
        "https://graph.microsoft.com/.default".to_owned(),
    );
    let client =
        GraphClient::with_backoff(base(&token_server), auth, Duration::from_secs(2), backoff)
            .expect("the client builds");
    let error = client
        .get_json("/v1.0/users/u1")
        .await
        .expect_err("no token");
    assert!(
        matches!(&error, GraphError::Auth(inner) if matches!(**inner, GraphAuthError::Transport { .. })),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(&format!(
            "cannot reach Microsoft Entra ID's token endpoint {url}{TENANT}/oauth2/v2.0/token: "
        )),
        "the whole token URL, host included: {error}"
    );
    assert!(client.requests().is_empty());
    assert_no_secret(&error);
}

#[tokio::test]
async fn a_401_refreshes_the_token_once() {
    let server = MockServer::start().await;
    let n_tokens = mount_tokens(&server).await;
    // Graph no longer accepts the first token after two calls.
    let api_calls = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&api_calls);
    Mock::given(method("GET"))
        .and(path("/v1.0/users/u1"))
        .respond_with(move |request: &Request| {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            let authorization = request
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if n > 2 && authorization == format!("Bearer {ACCESS_TOKEN}-1") {
                ResponseTemplate::new(401).set_body_json(graph_error(
                    "InvalidAuthenticationToken",
                    "Lifetime validation failed, the token is expired.",
                ))
            } else {
                ResponseTemplate::new(200).set_body_json(json!({"id": "u1"}))
            }
        })
        .mount(&server)
        .await;
    let client = client(&server);
    for _ in 0..2 {
        client.get_json("/v1.0/users/u1").await.expect("found");
    }
    assert_eq!(n_tokens.load(Ordering::SeqCst), 1);
    assert_eq!(
        client
            .get_json("/v1.0/users/u1")
            .await
            .expect("found after a new token"),
        Some(json!({"id": "u1"}))
    );
    assert_eq!(
        n_tokens.load(Ordering::SeqCst),
        2,
        "the token was refreshed"
    );
    assert_eq!(client.requests().get("/v1.0/users/u1"), Some(&4));
}

#[tokio::test]
async fn two_401s_are_unauthorized_naming_tenant_and_client() {
    let server = MockServer::start().await;
    let n_tokens = mount_tokens(&server).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users"))
        .respond_with(ResponseTemplate::new(401).set_body_json(graph_error(
            "InvalidAuthenticationToken",
            "Access token validation failure. Invalid audience.",
        )))
        .mount(&server)
        .await;
    let client = client(&server);
    let error = read_all(&client, "/v1.0/users?$top=999")
        .await
        .expect_err("unauthorized");
    assert!(
        matches!(&error, GraphError::Unauthorized { status: 401, code: Some(code), .. } if code == "InvalidAuthenticationToken"),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "Microsoft Graph did not accept the access token of tenant {TENANT}, client \
             {CLIENT_ID} for /v1.0/users?$top=999 (401 InvalidAuthenticationToken: Access token \
             validation failure. Invalid audience.); check that graph_url and login_url belong \
             to the same cloud and that the app is enabled"
        )
    );
    assert_eq!(client.requests().get("/v1.0/users"), Some(&2));
    assert_eq!(n_tokens.load(Ordering::SeqCst), 2);
    assert_no_secret(&error);
}

#[tokio::test]
async fn forbidden_names_the_permission_the_endpoint_needs() {
    let server = MockServer::start().await;
    let n_tokens = mount_tokens(&server).await;
    Mock::given(wiremock::matchers::path_regex("^/v1.0/"))
        .respond_with(ResponseTemplate::new(403).set_body_json(graph_error(
            "Authorization_RequestDenied",
            "Insufficient privileges to complete the operation.",
        )))
        .mount(&server)
        .await;
    let client = client(&server);
    for (path, permission) in [
        ("/v1.0/users/delta?$select=id", "User.Read.All"),
        ("/v1.0/users/u1/manager", "User.Read.All"),
        ("/v1.0/users/u1/memberOf", "GroupMember.Read.All"),
        (
            "/v1.0/groups?$filter=startswith(displayName,%27SocialTalent%27)",
            "GroupMember.Read.All",
        ),
        ("/v1.0/groups/g1/members", "GroupMember.Read.All"),
    ] {
        let error = read_all(&client, path).await.expect_err("forbidden");
        assert!(matches!(error, GraphError::Forbidden { .. }), "{error:?}");
        let message = error.to_string();
        assert!(
            message.contains(&format!(
                "Microsoft Graph refused {path} to tenant {TENANT}, client {CLIENT_ID} (403 \
                 Authorization_RequestDenied: Insufficient privileges to complete the operation.)"
            )),
            "{message}"
        );
        assert!(
            message.contains(&format!(
                "grant the application permission {permission} to the app"
            )),
            "{message}"
        );
        assert!(message.contains("Grant admin consent"), "{message}");
        assert_no_secret(&error);
    }
    let error = client
        .patch_json(
            "/v1.0/users/u1",
            &json!({"extension_abc_socialTalentId": "st-1"}),
        )
        .await
        .expect_err("forbidden");
    assert!(
        error
            .to_string()
            .contains("grant the application permission User.ReadWrite.All"),
        "{error}"
    );
    // One token for all of it: a 403 is not retried and does not drop the token.
    assert_eq!(n_tokens.load(Ordering::SeqCst), 1);
    assert_eq!(client.requests().values().sum::<u64>(), 6);
}

#[tokio::test]
async fn pages_that_cannot_be_read_name_the_url() {
    let server = MockServer::start().await;
    mount_tokens(&server).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/delta"))
        .respond_with(ResponseTemplate::new(200).set_body_raw("<html>Sign in</html>", "text/html"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"users": []})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/groups"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([{"id": "g1"}])))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1.0/groups/delta"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"value": [], "@odata.nextLink": 5})),
        )
        .mount(&server)
        .await;
    let full = json!({"value": users(0..3)}).to_string();
    Mock::given(method("GET"))
        .and(path("/v1.0/users/cut"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(&full.as_bytes()[..full.len() - 20], "application/json"),
        )
        .mount(&server)
        .await;
    let client = client(&server);
    let error = read_all(&client, "/v1.0/users/delta?$select=id")
        .await
        .expect_err("not JSON");
    assert!(
        matches!(error, GraphError::InvalidResponse { .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with(
            "Microsoft Graph sent an answer for /v1.0/users/delta?$select=id that cannot be \
             read: not valid JSON"
        ),
        "{message}"
    );
    for (path, expected) in [
        ("/v1.0/users?$top=5", "the page has no value array"),
        (
            "/v1.0/groups",
            "expected a JSON object with a value array, got an array",
        ),
        (
            "/v1.0/groups/delta",
            "the @odata.nextLink is a number, not a string",
        ),
        ("/v1.0/users/cut", "the JSON is cut off"),
    ] {
        let message = read_all(&client, path)
            .await
            .expect_err("unreadable")
            .to_string();
        assert!(
            message.contains(&format!("answer for {path} that")),
            "{message}"
        );
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }
    // An unreadable page is not retried: the run stops.
    assert_eq!(client.requests().get("/v1.0/users/delta"), Some(&1));
}

#[tokio::test]
async fn get_json_is_none_on_404_and_patch_json_sends_the_body() {
    let server = MockServer::start().await;
    mount_tokens(&server).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/u1/manager"))
        .respond_with(ResponseTemplate::new(404).set_body_json(graph_error(
            "Request_ResourceNotFound",
            "Resource 'manager' does not exist or one of its queried reference-property objects are not present.",
        )))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/v1.0/users/u1"))
        .and(header("content-type", "application/json"))
        .and(header("accept", "application/json"))
        .and(body_json(json!({"extension_abc_socialTalentId": "st-1"})))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/v1.0/users/synced"))
        .respond_with(ResponseTemplate::new(400).set_body_json(graph_error(
            "Request_BadRequest",
            "Unable to update the specified properties for on-premises mastered Directory Sync objects or objects currently undergoing migration.",
        )))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/v1.0/users/gone"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&server)
        .await;
    let client = client(&server);
    assert_eq!(
        client
            .get_json("/v1.0/users/u1/manager")
            .await
            .expect("no error"),
        None
    );
    client
        .patch_json(
            "/v1.0/users/u1",
            &json!({"extension_abc_socialTalentId": "st-1"}),
        )
        .await
        .expect("patched");
    let error = client
        .patch_json(
            "/v1.0/users/synced",
            &json!({"onPremisesExtensionAttributes": {"extensionAttribute1": "x"}}),
        )
        .await
        .expect_err("rejected");
    assert!(
        matches!(&error, GraphError::Rejected { status: 400, code: Some(code), .. } if code == "Request_BadRequest"),
        "{error:?}"
    );
    assert!(
        error.to_string().starts_with(
            "Microsoft Graph rejected /v1.0/users/synced (400 Request_BadRequest: Unable to update"
        ),
        "{error}"
    );
    let error = client
        .patch_json("/v1.0/users/gone", &json!({}))
        .await
        .expect_err("gone");
    assert_eq!(
        error.to_string(),
        "not found in Microsoft Graph: /v1.0/users/gone: Not Found"
    );
    assert_eq!(client.requests().get("/v1.0/users/synced"), Some(&1));
}

#[tokio::test]
async fn token_refusals_stop_at_once_and_token_outages_are_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(token_path()))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "error": "invalid_client",
            "error_description": "AADSTS7000222: The provided client secret keys for app are expired.",
            "error_codes": [7000222],
        })))
        .mount(&server)
        .await;
    let refused_client = client(&server);
    let error = read_all(&refused_client, "/v1.0/users/delta")
        .await
        .expect_err("refused");
    assert!(matches!(error, GraphError::Auth(_)), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with("cannot authenticate to Microsoft Graph: "),
        "{message}"
    );
    assert!(message.contains("AADSTS7000222"), "{message}");
    assert!(
        message.contains(TENANT) && message.contains(CLIENT_ID),
        "{message}"
    );
    assert_no_secret(&error);
    let token_calls = server.received_requests().await.expect("recording").len();
    assert_eq!(token_calls, 1, "a refusal is not retried");

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(token_path()))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "0.1"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    mount_tokens(&server).await;
    Mock::given(method("GET"))
        .and(path("/v1.0/users/u1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "u1"})))
        .mount(&server)
        .await;
    let retrying_client = client(&server);
    assert!(
        retrying_client
            .get_json("/v1.0/users/u1")
            .await
            .expect("found after the token endpoint recovered")
            .is_some()
    );
    assert_eq!(retrying_client.requests().get("/v1.0/users/u1"), Some(&1));
}

#[test]
fn request_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let graph = Url::parse("https://graph.microsoft.com").expect("valid URL");
    let login = Url::parse("https://login.microsoftonline.com").expect("valid URL");
    let auth = GraphAuth::client_secret(
        &login,
        TENANT,
        CLIENT_ID,
        Secret::new(SECRET),
        "https://graph.microsoft.com/.default".to_owned(),
    );
    let client =
        GraphClient::new(graph, auth, Duration::from_secs(1), 0).expect("the client builds");
    let mut n_items = 0;
    let pages = client.get_pages("/v1.0/users/delta", |items| {
        n_items += items.len();
        Ok(true)
    });
    assert_send(&pages);
    assert_send(&client.get_json("/v1.0/users/u1"));
    assert_send(&client.patch_json("/v1.0/users/u1", &Value::Null));
}

#[test]
fn urls_are_shown_with_long_tokens_cut_short() {
    let shown = |url: &str| display_url(&Url::parse(url).expect("valid URL"));
    let long = "a".repeat(400);
    assert_eq!(
        shown(&format!(
            "https://graph.microsoft.com/v1.0/users/delta?$deltatoken={long}"
        )),
        "/v1.0/users/delta?$deltatoken=aaaaaaaaaaaa…"
    );
    assert_eq!(
        shown(&format!(
            "https://graph.microsoft.com/v1.0/users?$select=id&%24skiptoken={long}&$top=5"
        )),
        "/v1.0/users?$select=id&%24skiptoken=aaaaaaaaaaaa…&$top=5"
    );
    assert_eq!(
        shown("https://graph.microsoft.com/v1.0/users/delta?$deltatoken=short"),
        "/v1.0/users/delta?$deltatoken=short"
    );
    assert_eq!(
        shown("https://graph.microsoft.com/v1.0/users"),
        "/v1.0/users"
    );
    assert_eq!(
        shown(&format!(
            "https://graph.microsoft.com/v1.0/users?$filter={long}"
        )),
        format!("/v1.0/users?$filter={long}"),
        "only the opaque tokens are cut"
    );
}

#[test]
fn a_graph_url_with_a_path_keeps_it() {
    let login = Url::parse("https://login.microsoftonline.com").expect("valid URL");
    for graph in [
        "http://127.0.0.1:9000/graph",
        "http://127.0.0.1:9000/graph/",
    ] {
        let auth = GraphAuth::client_secret(
            &login,
            TENANT,
            CLIENT_ID,
            Secret::new(SECRET),
            "https://graph.microsoft.com/.default".to_owned(),
        );
        let client = GraphClient::new(
            Url::parse(graph).expect("valid URL"),
            auth,
            Duration::from_secs(1),
            0,
        )
        .expect("the client builds");
        assert_eq!(
            client
                .url_for("/v1.0/users?$select=id")
                .expect("a URL")
                .as_str(),
            "http://127.0.0.1:9000/graph/v1.0/users?$select=id"
        );
        assert_eq!(
            client
                .url_for("http://127.0.0.1:9000/graph/v1.0/users/delta?$deltatoken=x")
                .expect("same origin")
                .as_str(),
            "http://127.0.0.1:9000/graph/v1.0/users/delta?$deltatoken=x"
        );
    }
}

#[test]
fn permissions_by_endpoint() {
    let get = |path| needed_permission(&Method::GET, path);
    assert_eq!(get("/v1.0/users"), Some("User.Read.All"));
    assert_eq!(get("/v1.0/users/delta"), Some("User.Read.All"));
    assert_eq!(get("/beta/users/u1/manager"), Some("User.Read.All"));
    assert_eq!(
        get("/v1.0/users/u1/transitiveMemberOf"),
        Some("GroupMember.Read.All")
    );
    assert_eq!(get("/v1.0/groups/delta"), Some("GroupMember.Read.All"));
    assert_eq!(
        get("/proxy/v1.0/groups/g1/members"),
        Some("GroupMember.Read.All")
    );
    assert_eq!(get("/v1.0/directoryObjects/x"), Some("User.Read.All"));
    assert_eq!(get("/v1.0/applications"), None);
    assert_eq!(get("/users"), None);
    assert_eq!(
        needed_permission(&Method::PATCH, "/v1.0/users/u1"),
        Some("User.ReadWrite.All")
    );
    assert!(forbidden_hint(&Method::GET, "/v1.0/applications").contains(READ_PERMISSIONS));
}
