//! The SCIM client against a programmable fake (`wiremock`) for what the real peer cannot do:
//! 429 with `Retry-After`, 5xx bursts, slow answers, SCIM error bodies, and the limiter's rate and
//! in-flight bounds as seen by the server. Real time with short delays (paused time would fire
//! reqwest's timeouts at once); assertions are lower bounds on waits and exact request counts.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use socialtalent_sync::config::Config;
use socialtalent_sync::scim::client::{ScimClient, ScimError};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN: &str = "t0k3n-secret";
const SCIM_JSON: &str = "application/scim+json";

/// The `[target]` settings a test varies.
struct Target {
    requests_per_second: f64,
    burst: u32,
    max_in_flight: usize,
    timeout: &'static str,
    max_retries: u32,
}

impl Default for Target {
    /// Loose limits and a timeout that a loaded machine will not hit, so only what a test sets
    /// matters.
    fn default() -> Self {
        Target {
            requests_per_second: 200.0,
            burst: 20,
            max_in_flight: 8,
            timeout: "5s",
            max_retries: 3,
        }
    }
}

/// A client for `server`, built through the public path: TOML → `Config` → `sync::scim_client`.
fn client(server: &MockServer, target: &Target) -> ScimClient {
    client_at(&server.uri(), target)
}

/// A client for the SCIM server at `uri` (`http://127.0.0.1:PORT`).
fn client_at(uri: &str, target: &Target) -> ScimClient {
    let text = format!(
        r#"
[source]
kind = "file"

[source.file]
path = "x.json"

[target]
base_url = "{uri}/v2"
token = "{TOKEN}"
requests_per_second = {rps:?}
burst = {burst}
max_in_flight = {in_flight}
timeout = "{timeout}"
max_retries = {retries}

[mapping]
userName = "{{{{ user.email }}}}"
"#,
        rps = target.requests_per_second,
        burst = target.burst,
        in_flight = target.max_in_flight,
        timeout = target.timeout,
        retries = target.max_retries,
    );
    let config =
        Config::parse(Path::new("/tmp/scim-client-test/config.toml"), &text).expect("valid config");
    socialtalent_sync::sync::scim_client(&config).expect("client builds")
}

fn default_client(server: &MockServer) -> ScimClient {
    client(server, &Target::default())
}

fn scim_user(id: &str, user_name: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "id": id,
        "userName": user_name,
        "active": true,
        "meta": {"resourceType": "User", "location": format!("/v2/Users/{id}")}
    })
}

fn list_response(users: &[Value]) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": users.len(),
        "startIndex": 1,
        "itemsPerPage": users.len(),
        "Resources": users,
    })
}

fn scim_error(status: u16, scim_type: Option<&str>, detail: &str) -> Value {
    let mut body = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
        "status": status.to_string(),
        "detail": detail,
    });
    if let Some(kind) = scim_type {
        body["scimType"] = json!(kind);
    }
    body
}

/// A SCIM JSON answer.
fn scim(status: u16, body: &Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.to_string().into_bytes(), SCIM_JSON)
}

fn new_doc() -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "zoe.odegard@example.com",
        "externalId": "00u1a2b3c4",
        "active": true
    })
}

/// When each request reached the fake, on both clocks.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<Vec<(Instant, SystemTime)>>>);

impl Arrivals {
    fn instants(&self) -> Vec<Instant> {
        let log = self.0.lock().expect("the arrivals lock is not poisoned");
        log.iter().map(|(instant, _)| *instant).collect()
    }

    fn wall(&self) -> Vec<SystemTime> {
        let log = self.0.lock().expect("the arrivals lock is not poisoned");
        log.iter().map(|(_, wall)| *wall).collect()
    }

    /// The time between the first and the second request.
    fn first_gap(&self) -> Duration {
        let instants = self.instants();
        assert!(instants.len() >= 2, "expected a retry, got {instants:?}");
        instants[1] - instants[0]
    }
}

/// A responder that logs each arrival and answers the `n`-th request (from 0) with `answer(n)`.
struct Script<F> {
    arrivals: Arrivals,
    answer: F,
}

impl<F> Respond for Script<F>
where
    F: Fn(usize) -> ResponseTemplate + Send + Sync,
{
    fn respond(&self, _request: &Request) -> ResponseTemplate {
        let n = {
            let mut log = self
                .arrivals
                .0
                .lock()
                .expect("the arrivals lock is not poisoned");
            log.push((Instant::now(), SystemTime::now()));
            log.len() - 1
        };
        (self.answer)(n)
    }
}

fn script<F>(arrivals: &Arrivals, answer: F) -> Script<F>
where
    F: Fn(usize) -> ResponseTemplate + Send + Sync,
{
    Script {
        arrivals: arrivals.clone(),
        answer,
    }
}

async fn requests(server: &MockServer) -> Vec<Request> {
    server
        .received_requests()
        .await
        .expect("request recording is on")
}

fn retries(client: &ScimClient) -> u64 {
    client.stats().retries.load(Ordering::Relaxed)
}

/// The largest number of instants in any window `[t, t + window)` starting at one of them.
fn max_in_window(instants: &[Instant], window: Duration) -> usize {
    let mut sorted = instants.to_vec();
    sorted.sort();
    (0..sorted.len())
        .map(|i| {
            sorted[i..]
                .iter()
                .take_while(|t| **t < sorted[i] + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Create

#[tokio::test]
async fn create_posts_scim_json_with_the_bearer_token_and_returns_the_new_id() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/Users"))
        .and(header("content-type", SCIM_JSON))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(body_json(new_doc()))
        .respond_with(scim(
            201,
            &scim_user("2819c223-7f76", "zoe.odegard@example.com"),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let client = default_client(&server);

    let (id, _) = client.create(&new_doc()).await.expect("201 is a success");

    assert_eq!(id, "2819c223-7f76");
    assert_eq!(client.stats().requests.load(Ordering::Relaxed), 1);
    assert_eq!(retries(&client), 0);
    let accept = requests(&server).await[0]
        .headers
        .get("accept")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .expect("an Accept header");
    assert!(accept.contains(SCIM_JSON), "Accept: {accept}");
}

#[tokio::test]
async fn create_with_a_non_json_201_body_is_an_invalid_response() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/Users"))
        .respond_with(ResponseTemplate::new(201).set_body_string("<html>Created</html>"))
        .expect(1)
        .mount(&server)
        .await;
    let client = default_client(&server);

    let error = client.create(&new_doc()).await.expect_err("not JSON");

    assert!(
        matches!(&error, ScimError::InvalidResponse { context, .. } if context == "POST /Users"),
        "{error:?}"
    );
    assert!(error.to_string().contains("POST /Users"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// 429 and Retry-After

#[tokio::test]
async fn a_429_with_retry_after_seconds_is_waited_out_then_succeeds() {
    let server = MockServer::start().await;
    let arrivals = Arrivals::default();
    Mock::given(method("POST"))
        .and(path("/v2/Users"))
        .respond_with(script(&arrivals, |n| match n {
            0 => ResponseTemplate::new(429).insert_header("Retry-After", "1"),
            _ => scim(201, &scim_user("u-1", "zoe.odegard@example.com")),
        }))
        .expect(2)
        .mount(&server)
        .await;
    let client = default_client(&server);

    let (id, _) = client.create(&new_doc()).await.expect("the retry succeeds");

    assert_eq!(id, "u-1");
    assert!(
        arrivals.first_gap() >= Duration::from_secs(1),
        "retried after {:?}, before Retry-After: 1",
        arrivals.first_gap()
    );
    assert_eq!(retries(&client), 1);
}

#[tokio::test]
async fn a_retry_after_longer_than_fifteen_minutes_fails_at_once_naming_its_end() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/Users"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "3600"))
        .expect(1)
        .mount(&server)
        .await;
    let client = default_client(&server);

    let error = client.create(&new_doc()).await.expect_err("not waited out");

    let message = error.to_string();
    assert!(
        matches!(error, ScimError::Unavailable { status: 429, .. }),
        "{message}"
    );
    assert!(message.contains("3600 s, until "), "{message}");
    assert!(message.contains("15 minutes"), "{message}");
    assert_eq!(retries(&client), 0);
}

#[tokio::test]
async fn a_fractional_retry_after_is_honoured() {
    // 0.6 s rather than 0.3 s: the first backoff without a usable hint is at most 0.5 s, so only a
    // client that really parsed "0.6" waits this long.
    let server = MockServer::start().await;
    let arrivals = Arrivals::default();
    Mock::given(method("DELETE"))
        .and(path("/v2/Users/u-1"))
        .respond_with(script(&arrivals, |n| match n {
            0 => ResponseTemplate::new(429).insert_header("Retry-After", "0.6"),
            _ => ResponseTemplate::new(204),
        }))
        .expect(2)
        .mount(&server)
        .await;
    let client = default_client(&server);

    client.delete("u-1").await.expect("the retry succeeds");

    assert!(
        arrivals.first_gap() >= Duration::from_millis(600),
        "retried after {:?}",
        arrivals.first_gap()
    );
    assert_eq!(retries(&client), 1);
}

#[tokio::test]
async fn an_http_date_retry_after_is_honoured() {
    let server = MockServer::start().await;
    let arrivals = Arrivals::default();
    let not_before = Arc::new(Mutex::new(None::<SystemTime>));
    let recorded = Arc::clone(&not_before);
    Mock::given(method("DELETE"))
        .and(path("/v2/Users/u-1"))
        .respond_with(script(&arrivals, move |n| {
            if n == 0 {
                // HTTP dates have whole seconds: this one lies between 1 and 2 s ahead.
                let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2));
                let parsed = httpdate::parse_http_date(&date).expect("a valid HTTP date");
                *recorded.lock().expect("not poisoned") = Some(parsed);
                ResponseTemplate::new(429).insert_header("Retry-After", date.as_str())
            } else {
                ResponseTemplate::new(204)
            }
        }))
        .expect(2)
        .mount(&server)
        .await;
    let client = default_client(&server);

    client.delete("u-1").await.expect("the retry succeeds");

    let not_before = not_before
        .lock()
        .expect("not poisoned")
        .expect("the 429 was sent");
    let retried_at = arrivals.wall()[1];
    assert!(
        retried_at >= not_before,
        "retried {:?} before the Retry-After date",
        not_before.duration_since(retried_at).unwrap_or_default()
    );
    assert!(arrivals.first_gap() >= Duration::from_millis(900));
    assert_eq!(retries(&client), 1);
}

#[tokio::test]
async fn a_429_without_retry_after_backs_off_and_succeeds() {
    let server = MockServer::start().await;
    let arrivals = Arrivals::default();
    Mock::given(method("DELETE"))
        .and(path("/v2/Users/u-1"))
        .respond_with(script(&arrivals, |n| match n {
            0 => ResponseTemplate::new(429),
            _ => ResponseTemplate::new(204),
        }))
        .expect(2)
        .mount(&server)
        .await;
    let client = default_client(&server);

    client.delete("u-1").await.expect("the retry succeeds");

    // The first backoff is 0.5 s with equal jitter: never less than 0.25 s.
    assert!(
        arrivals.first_gap() >= Duration::from_millis(250),
        "retried after only {:?}",
        arrivals.first_gap()
    );
    assert_eq!(retries(&client), 1);
}

// ---------------------------------------------------------------------------------------------
// 5xx

#[tokio::test]
async fn a_burst_of_503s_is_ridden_out() {
    let server = MockServer::start().await;
    let arrivals = Arrivals::default();
    Mock::given(method("GET"))
        .and(path("/v2/Users"))
        .respond_with(script(&arrivals, |n| {
            if n < 3 {
                scim(503, &scim_error(503, None, "maintenance")).insert_header("Retry-After", "0.1")
            } else {
                scim(200, &list_response(&[scim_user("u-1", "a@example.com")]))
            }
        }))
        .expect(4)
        .mount(&server)
        .await;
    let client = default_client(&server);

    let page = client
        .list_users(1, 100)
        .await
        .expect("the fourth try works");

    assert_eq!(page.total_results, 1);
    assert_eq!(page.users[0].id, "u-1");
    assert_eq!(retries(&client), 3);
    let instants = arrivals.instants();
    for pair in instants.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(100));
    }
}

#[tokio::test]
async fn persistent_500s_give_up_after_max_retries_as_unavailable() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path("/v2/Users/u-1"))
        .respond_with(scim(500, &scim_error(500, None, "database on fire")))
        .expect(3)
        .mount(&server)
        .await;
    let target = Target {
        max_retries: 2,
        ..Target::default()
    };
    let client = client(&server, &target);

    let error = client.delete("u-1").await.expect_err("never succeeds");

    assert!(
        matches!(
            error,
            ScimError::Unavailable {
                status: 500,
                attempts: 3,
                ..
            }
        ),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("(500)"), "{message}");
    assert!(message.contains("after 3 attempts"), "{message}");
    assert!(message.contains("database on fire"), "{message}");
    assert_eq!(retries(&client), 2);
}

// ---------------------------------------------------------------------------------------------
// Timeouts

#[tokio::test]
async fn a_request_that_keeps_timing_out_is_a_transport_error_naming_the_url() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path("/v2/Users/u-1"))
        .respond_with(ResponseTemplate::new(204).set_delay(Duration::from_secs(2)))
        .expect(2)
        .mount(&server)
        .await;
    let target = Target {
        timeout: "300ms",
        max_retries: 1,
        ..Target::default()
    };
    let client = client(&server, &target);

    let error = client.delete("u-1").await.expect_err("every try times out");

    let url = format!("{}/v2/Users/u-1", server.uri());
    match &error {
        ScimError::Transport {
            url: reported,
            message,
        } => {
            assert_eq!(reported, &url);
            assert!(message.contains("timed out"), "{message}");
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains(&url), "{message}");
    assert!(message.contains("timed out"), "{message}");
    assert_eq!(retries(&client), 1);
}

#[tokio::test]
async fn a_slow_answer_then_a_fast_one_succeeds() {
    let server = MockServer::start().await;
    let arrivals = Arrivals::default();
    Mock::given(method("DELETE"))
        .and(path("/v2/Users/u-1"))
        .respond_with(script(&arrivals, |n| match n {
            0 => ResponseTemplate::new(204).set_delay(Duration::from_secs(5)),
            _ => ResponseTemplate::new(204),
        }))
        .expect(2)
        .mount(&server)
        .await;
    let target = Target {
        timeout: "300ms",
        ..Target::default()
    };
    let client = client(&server, &target);

    client.delete("u-1").await.expect("the retry is fast");

    // The first try was abandoned at the timeout (0.3 s, then a backoff of at most 0.5 s), not
    // waited out for 5 s; the upper bound is only a generous sanity cap.
    assert!(arrivals.first_gap() >= Duration::from_millis(300));
    assert!(arrivals.first_gap() < Duration::from_secs(4));
    assert_eq!(retries(&client), 1);
}

// ---------------------------------------------------------------------------------------------
// Other 4xx

#[tokio::test]
async fn a_400_with_a_scim_error_is_rejected_at_once_with_its_detail() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/Users"))
        .respond_with(scim(
            400,
            &scim_error(
                400,
                Some("invalidValue"),
                "Attribute 'coreTeam' is required",
            ),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let client = default_client(&server);

    let error = client.create(&new_doc()).await.expect_err("rejected");

    match &error {
        ScimError::Rejected { status, detail } => {
            assert_eq!(*status, 400);
            assert!(
                detail.contains("Attribute 'coreTeam' is required"),
                "{detail}"
            );
            assert!(detail.contains("invalidValue"), "{detail}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("Attribute 'coreTeam' is required"),
        "{message}"
    );
    assert!(message.contains("invalidValue"), "{message}");
    assert_eq!(retries(&client), 0);
    assert_eq!(requests(&server).await.len(), 1);
}

#[tokio::test]
async fn a_400_without_a_scim_body_quotes_the_body_start() {
    let server = MockServer::start().await;
    Mock::given(method("PATCH"))
        .and(path("/v2/Users/u-1"))
        .respond_with(ResponseTemplate::new(400).set_body_raw(
            b"<html><body>Bad Request</body></html>".to_vec(),
            "text/html",
        ))
        .expect(1)
        .mount(&server)
        .await;
    let client = default_client(&server);

    let error = client
        .patch("u-1", &json!({"Operations": []}))
        .await
        .expect_err("rejected");

    assert!(
        matches!(error, ScimError::Rejected { status: 400, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("no SCIM error detail"), "{message}");
    assert!(message.contains("<html><body>Bad Request"), "{message}");
}

#[tokio::test]
async fn a_401_is_unauthorized_and_points_at_the_token_setting() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/Users"))
        .respond_with(scim(401, &scim_error(401, None, "Invalid bearer token")))
        .expect(1)
        .mount(&server)
        .await;
    let client = default_client(&server);

    let error = client.list_users(1, 10).await.expect_err("unauthorized");

    assert!(
        matches!(error, ScimError::Unauthorized { status: 401, .. }),
        "{error:?}"
    );
    let message = error.to_string();
    assert!(message.contains("target.token"), "{message}");
    assert!(message.contains("Invalid bearer token"), "{message}");
    assert_eq!(retries(&client), 0);
}

#[tokio::test]
async fn the_token_never_appears_in_errors_or_debug_output() {
    let server = MockServer::start().await;
    let answers = [
        (
            "/v2/Users/s401",
            scim(401, &scim_error(401, None, "bad token")),
        ),
        ("/v2/Users/s403", ResponseTemplate::new(403)),
        (
            "/v2/Users/s400",
            ResponseTemplate::new(400).set_body_string("nope"),
        ),
        ("/v2/Users/s404", ResponseTemplate::new(404)),
        (
            "/v2/Users/s409",
            scim(409, &scim_error(409, Some("uniqueness"), "taken")),
        ),
        ("/v2/Users/s500", ResponseTemplate::new(500)),
        (
            "/v2/Users/slow",
            ResponseTemplate::new(204).set_delay(Duration::from_secs(2)),
        ),
    ];
    for (route, answer) in answers {
        Mock::given(path(route))
            .respond_with(answer)
            .mount(&server)
            .await;
    }
    let target = Target {
        timeout: "300ms",
        max_retries: 0,
        ..Target::default()
    };
    let client = client(&server, &target);

    let mut errors = Vec::new();
    for id in ["s401", "s403", "s400", "s404", "s409", "s500", "slow"] {
        errors.push(client.delete(id).await.expect_err("every route fails"));
    }
    // Nothing listens on a port that was just freed (wiremock keeps its servers running
    // in a pool, so a dropped MockServer would still answer).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let unreachable = client_at(&format!("http://127.0.0.1:{port}"), &target);
    errors.push(
        unreachable
            .delete("u-1")
            .await
            .expect_err("connection refused"),
    );

    assert!(matches!(
        errors[0],
        ScimError::Unauthorized { status: 401, .. }
    ));
    assert!(matches!(
        errors[1],
        ScimError::Unauthorized { status: 403, .. }
    ));
    assert!(
        matches!(errors[7], ScimError::Transport { .. }),
        "{:?}",
        errors[7]
    );
    for error in &errors {
        let shown = format!("{error} / {error:?}");
        assert!(!shown.contains(TOKEN), "the token leaked: {shown}");
    }
    let client_debug = format!("{client:?}");
    assert!(
        !client_debug.contains(TOKEN),
        "the token leaked: {client_debug}"
    );
    // The token was really sent, so its absence above means something.
    let sent = requests(&server).await;
    assert!(sent.iter().all(|request| {
        request
            .headers
            .get("authorization")
            .is_some_and(|value| value.as_bytes() == format!("Bearer {TOKEN}").as_bytes())
    }));
}

#[tokio::test]
async fn a_409_is_a_conflict_and_a_404_is_not_found() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v2/Users"))
        .respond_with(scim(
            409,
            &scim_error(409, Some("uniqueness"), "userName is already taken"),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/v2/Users/gone"))
        .respond_with(scim(404, &scim_error(404, None, "Resource gone not found")))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/v2/Users/gone"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    let client = default_client(&server);

    let conflict = client.create(&new_doc()).await.expect_err("conflict");
    match &conflict {
        ScimError::Conflict { detail } => {
            assert!(detail.contains("userName is already taken"), "{detail}");
            assert!(detail.contains("uniqueness"), "{detail}");
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    let missing = client
        .patch("gone", &json!({"Operations": []}))
        .await
        .expect_err("not found");
    match &missing {
        ScimError::NotFound { detail } => assert!(detail.contains("not found"), "{detail}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let missing = client.delete("gone").await.expect_err("not found");
    assert!(matches!(missing, ScimError::NotFound { .. }), "{missing:?}");
    assert_eq!(retries(&client), 0);
}

// ---------------------------------------------------------------------------------------------
// PATCH answers

#[tokio::test]
async fn patch_accepts_204_without_a_body_and_200_with_one() {
    let server = MockServer::start().await;
    let body = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "active", "value": false}]
    });
    Mock::given(method("PATCH"))
        .and(path("/v2/Users/u-204"))
        .and(header("content-type", SCIM_JSON))
        .and(body_json(body.clone()))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/v2/Users/u-200"))
        .and(header("content-type", SCIM_JSON))
        .and(body_json(body.clone()))
        .respond_with(scim(200, &scim_user("u-200", "b@example.com")))
        .expect(1)
        .mount(&server)
        .await;
    let client = default_client(&server);

    client
        .patch("u-204", &body)
        .await
        .expect("204 is a success");
    client
        .patch("u-200", &body)
        .await
        .expect("200 is a success");
}

#[tokio::test]
async fn ids_are_percent_encoded_as_one_path_segment() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let client = default_client(&server);

    client.delete("a b/c?d").await.expect("deleted");

    let sent = requests(&server).await;
    assert_eq!(sent[0].url.path(), "/v2/Users/a%20b%2Fc%3Fd");
    assert_eq!(sent[0].url.query(), None);
}

// ---------------------------------------------------------------------------------------------
// find_by_user_name

#[tokio::test]
async fn find_by_user_name_filters_and_picks_the_case_insensitive_match() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/Users"))
        .and(query_param("filter", r#"userName eq "Zoe@Example.com""#))
        .respond_with(scim(
            200,
            &list_response(&[
                scim_user("other", "zoe@example.com.au"),
                scim_user("u-7", "zoe@example.COM"),
            ]),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let client = default_client(&server);

    let found = client
        .find_by_user_name("Zoe@Example.com")
        .await
        .expect("the lookup works")
        .expect("a match");

    assert_eq!(found.id, "u-7");
    let sent = requests(&server).await;
    let query = sent[0].url.query().expect("a query string");
    assert!(
        !query.contains('"') && !query.contains(' '),
        "not URL-encoded: {query}"
    );
    assert!(query.starts_with("filter=userName"), "{query}");
}

#[tokio::test]
async fn find_by_user_name_escapes_quotes_and_backslashes() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/Users"))
        .and(query_param(
            "filter",
            r#"userName eq "o\"brien\\x@example.com""#,
        ))
        .respond_with(scim(
            200,
            &list_response(&[scim_user("u-8", r#"o"brien\x@example.com"#)]),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let client = default_client(&server);

    let found = client
        .find_by_user_name(r#"o"brien\x@example.com"#)
        .await
        .expect("the lookup works");

    assert_eq!(found.map(|user| user.id).as_deref(), Some("u-8"));
}

#[tokio::test]
async fn find_by_user_name_with_no_resources_is_none() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/Users"))
        .respond_with(scim(
            200,
            &json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                "totalResults": 0,
                "Resources": []
            }),
        ))
        .expect(2)
        .mount(&server)
        .await;
    let client = default_client(&server);

    let found = client
        .find_by_user_name("nobody@example.com")
        .await
        .expect("the lookup works");
    assert!(found.is_none(), "{found:?}");
    // A list whose only entry has a different name is no match either.
    server.reset().await;
    Mock::given(method("GET"))
        .and(path("/v2/Users"))
        .respond_with(scim(
            200,
            &list_response(&[scim_user("u-9", "somebody@example.com")]),
        ))
        .mount(&server)
        .await;
    let found = client
        .find_by_user_name("nobody@example.com")
        .await
        .expect("the lookup works");
    assert!(found.is_none(), "{found:?}");
}

// ---------------------------------------------------------------------------------------------
// The limiter, seen from the server

#[tokio::test]
async fn the_rate_limit_holds_at_the_server_and_retries_take_permits_too() {
    let server = MockServer::start().await;
    let arrivals = Arrivals::default();
    // The first three requests get 429 with Retry-After: 0, so their retries could go at once
    // if they bypassed the limiter.
    Mock::given(method("DELETE"))
        .respond_with(script(&arrivals, |n| {
            if n < 3 {
                ResponseTemplate::new(429).insert_header("Retry-After", "0")
            } else {
                ResponseTemplate::new(204)
            }
        }))
        .mount(&server)
        .await;
    let target = Target {
        requests_per_second: 5.0,
        burst: 2,
        max_in_flight: 16,
        ..Target::default()
    };
    let client = client(&server, &target);

    let deletes = (0..12).map(|i| {
        let client = client.clone();
        async move { client.delete(&format!("u-{i}")).await }
    });
    let results = futures::future::join_all(deletes).await;

    for result in &results {
        assert!(result.is_ok(), "{result:?}");
    }
    let instants = arrivals.instants();
    assert_eq!(instants.len(), 15, "12 deletes and 3 retries");
    assert_eq!(retries(&client), 3);
    let busiest = max_in_window(&instants, Duration::from_secs(1));
    assert!(busiest <= 5 + 2, "{busiest} requests within one second");
    // Fifteen permits at 5/s after a burst of 2 span at least 13 × 0.2 s = 2.6 s; without
    // permits for the retries it would be 2 s.
    let first = instants.iter().min().expect("requests arrived");
    let last = instants.iter().max().expect("requests arrived");
    assert!(
        *last - *first >= Duration::from_millis(2400),
        "15 requests within {:?}",
        *last - *first
    );
}

#[tokio::test]
async fn max_in_flight_bounds_the_concurrency_the_server_sees() {
    const HOLD: Duration = Duration::from_millis(200);
    let server = MockServer::start().await;
    let arrivals = Arrivals::default();
    Mock::given(method("DELETE"))
        .respond_with(script(&arrivals, |_| {
            ResponseTemplate::new(204).set_delay(HOLD)
        }))
        .mount(&server)
        .await;
    let target = Target {
        max_in_flight: 2,
        ..Target::default()
    };
    let client = client(&server, &target);

    let deletes = (0..6).map(|i| {
        let client = client.clone();
        async move { client.delete(&format!("u-{i}")).await }
    });
    let results = futures::future::join_all(deletes).await;

    for result in &results {
        assert!(result.is_ok(), "{result:?}");
    }
    // Each answer leaves the server no sooner than HOLD after its request arrived, so the
    // requests in flight when one arrives are those that arrived within HOLD before it.
    let instants = arrivals.instants();
    assert_eq!(instants.len(), 6);
    let peak = max_in_window(&instants, HOLD);
    assert!(peak <= 2, "{peak} requests in flight at once");
    assert_eq!(peak, 2, "the two slots were used in parallel");
}
