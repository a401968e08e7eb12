//! Checks the fake OneLogin (`support::fake_onelogin`) itself against OneLogin's documented
//! behaviour, with plain reqwest — so the tests of our OneLogin source meet OneLogin's
//! behaviour, not our own idea of it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::header::HeaderMap;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::support::fake_onelogin::{CLIENT_ID, CLIENT_SECRET, FakeOneLogin, RATE_LIMIT};

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

async fn token(fake: &FakeOneLogin) -> String {
    let basic = STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    let answer: Value = client()
        .post(format!("{}/auth/oauth2/v2/token", fake.url))
        .header("authorization", format!("Basic {basic}"))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .expect("token request")
        .json()
        .await
        .expect("JSON");
    answer["access_token"].as_str().expect("a token").to_owned()
}

async fn get(fake: &FakeOneLogin, token: &str, path: &str) -> (StatusCode, HeaderMap, Value) {
    let response = client()
        .get(format!("{}{path}", fake.url))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    (
        status,
        headers,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .map(|value| value.to_str().expect("ascii").to_owned())
}

async fn account(users: u64) -> FakeOneLogin {
    let fake = FakeOneLogin::start().await;
    for id in 1..=users {
        fake.add_user(
            1000 + id,
            json!({"username": format!("u{id}"), "email": format!("u{id}@example.com"),
                "department": "Sales", "role_ids": [7], "group_id": 3}),
        );
    }
    fake.add_role(7, "LP Sales");
    fake.add_group(3, "SocialTalent");
    fake
}

#[tokio::test]
async fn the_token_endpoint_takes_basic_or_body_credentials_and_refuses_others() {
    let fake = account(0).await;
    let url = format!("{}/auth/oauth2/v2/token", fake.url);
    let body_form: Value = client()
        .post(&url)
        .json(
            &json!({"grant_type": "client_credentials", "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET}),
        )
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("JSON");
    assert_eq!(body_form["token_type"], "bearer");
    assert_eq!(body_form["expires_in"], 36000);
    assert!(token(&fake).await.starts_with("ol-access-"));
    let wrong = client()
        .post(&url)
        .basic_auth(CLIENT_ID, Some("nope"))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let body: Value = wrong.json().await.expect("JSON");
    assert_eq!(body["status"]["message"], "Authentication Failure");
    let no_grant = client()
        .post(&url)
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .json(&json!({}))
        .send()
        .await
        .expect("request");
    assert_eq!(no_grant.status(), StatusCode::BAD_REQUEST);
    assert_eq!(fake.tokens_issued(), 2);
}

#[tokio::test]
async fn users_page_by_after_cursor_with_fields_and_rate_limit_headers() {
    let fake = account(7).await;
    let token = token(&fake).await;
    let (status, headers, first) = get(&fake, &token, "/api/2/users?limit=3").await;
    assert_eq!(status, StatusCode::OK);
    let first = first.as_array().expect("a bare array").clone();
    assert_eq!(first.len(), 3);
    assert_eq!(first[0]["id"], 1001, "integer ids, sorted");
    assert!(
        first[0].get("department").is_none(),
        "few fields by default"
    );
    assert!(first[0].get("role_ids").is_none());
    assert_eq!(header(&headers, "total-count").as_deref(), Some("7"));
    assert_eq!(header(&headers, "total-pages").as_deref(), Some("3"));
    assert_eq!(
        header(&headers, "x-ratelimit-limit"),
        Some(RATE_LIMIT.to_string())
    );
    assert!(header(&headers, "x-ratelimit-remaining").is_some());
    assert!(header(&headers, "x-ratelimit-reset").is_some());
    let mut cursor = header(&headers, "after-cursor").expect("more pages");
    let mut ids = vec![];
    loop {
        let (_, headers, page) = get(
            &fake,
            &token,
            &format!("/api/2/users?limit=3&fields=id,department,role_ids&cursor={cursor}"),
        )
        .await;
        for user in page.as_array().expect("array") {
            assert_eq!(user["department"], "Sales");
            assert_eq!(user["role_ids"], json!([7]));
            assert!(
                user.get("email").is_none(),
                "only the fields asked for, and id"
            );
            ids.push(user["id"].as_u64().expect("integer"));
        }
        match header(&headers, "after-cursor") {
            Some(next) => cursor = next,
            None => break,
        }
    }
    assert_eq!(ids, vec![1004, 1005, 1006, 1007]);
}

#[tokio::test]
async fn updated_since_and_filters_narrow_the_list() {
    let fake = account(3).await;
    fake.advance_clock(600);
    fake.update_user(1002, json!({"title": "Lead"}));
    let token = token(&fake).await;
    let (_, _, changed) = get(
        &fake,
        &token,
        "/api/2/users?updated_since=2026-01-05T09:05:00Z&fields=id,title",
    )
    .await;
    assert_eq!(changed, json!([{"id": 1002, "title": "Lead"}]));
    let (status, _, error) = get(&fake, &token, "/api/2/users?updated_since=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error["name"], "BadRequestError");
    let (_, _, by_ids) = get(&fake, &token, "/api/2/users?user_ids=1001,1003&fields=id").await;
    assert_eq!(by_ids, json!([{"id": 1001}, {"id": 1003}]));
    let (_, _, by_email) = get(&fake, &token, "/api/2/users?email=U2@example.com&fields=id").await;
    assert_eq!(by_email, json!([{"id": 1002}]));
    // A role assignment does not move updated_at.
    fake.advance_clock(600);
    fake.assign_role(1001, 8);
    let (_, _, none) = get(
        &fake,
        &token,
        "/api/2/users?updated_since=2026-01-05T09:15:00Z",
    )
    .await;
    assert_eq!(none, json!([]));
}

#[tokio::test]
async fn roles_role_users_and_v1_groups() {
    let fake = account(2).await;
    fake.add_role(8, "Everyone");
    let token = token(&fake).await;
    let (_, _, roles) = get(&fake, &token, "/api/2/roles").await;
    assert_eq!(
        roles,
        json!([{"id": 7, "name": "LP Sales"}, {"id": 8, "name": "Everyone"}])
    );
    let (_, _, members) = get(&fake, &token, "/api/2/roles/7/users").await;
    let ids: Vec<&Value> = members
        .as_array()
        .expect("array")
        .iter()
        .map(|m| &m["id"])
        .collect();
    assert_eq!(ids, vec![&json!(1001), &json!(1002)]);
    let (status, _, _) = get(&fake, &token, "/api/2/roles/99/users").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, groups) = get(&fake, &token, "/api/1/groups").await;
    assert_eq!(groups["status"]["error"], false);
    assert_eq!(
        groups["data"],
        json!([{"id": 3, "name": "SocialTalent", "reference": null}])
    );
    assert_eq!(groups["pagination"]["after_cursor"], Value::Null);
}

#[tokio::test]
async fn bad_tokens_injected_faults_and_a_deleted_admin() {
    let fake = account(2).await;
    let (status, _, body) = get(&fake, "made-up", "/api/2/users").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        body,
        json!({"statusCode": 401, "name": "Unauthorized", "message": "Authentication Failure"})
    );
    let token = token(&fake).await;
    fake.rate_limit_next("/api/2/users", 1, Some(2));
    let (status, headers, body) = get(&fake, &token, "/api/2/users").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["name"], "TooManyRequestsError");
    assert_eq!(header(&headers, "retry-after").as_deref(), Some("2"));
    assert_eq!(
        header(&headers, "x-ratelimit-remaining").as_deref(),
        Some("0")
    );
    fake.truncate_next_page("/api/2/users");
    let (status, _, body) = get(&fake, &token, "/api/2/users").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_string(), "cut JSON does not parse: {body}");
    fake.expire_tokens_after(1);
    assert_eq!(get(&fake, &token, "/api/2/roles").await.0, StatusCode::OK);
    assert_eq!(
        get(&fake, &token, "/api/2/roles").await.0,
        StatusCode::UNAUTHORIZED
    );
    fake.delete_admin();
    let retry = client()
        .post(format!("{}/auth/oauth2/v2/token", fake.url))
        .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .expect("request");
    assert_eq!(retry.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn a_used_up_budget_answers_429_and_custom_fields_must_exist() {
    let fake = account(1).await;
    let token = token(&fake).await;
    fake.set_remaining(0);
    assert_eq!(
        get(&fake, &token, "/api/2/users").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    fake.advance_clock(3600);
    assert_eq!(get(&fake, &token, "/api/2/users").await.0, StatusCode::OK);
    let put = |body: Value| {
        let url = format!("{}/api/2/users/1001", fake.url);
        let token = token.clone();
        async move {
            client()
                .put(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .expect("request")
        }
    };
    let refused = put(json!({"custom_attributes": {"socialTalentId": "x"}})).await;
    assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    fake.define_custom_field("socialTalentId");
    let accepted = put(json!({"custom_attributes": {"socialTalentId": "x"}})).await;
    assert_eq!(accepted.status(), StatusCode::OK);
    assert_eq!(
        fake.user(1001).expect("user")["custom_attributes"]["socialTalentId"],
        "x"
    );
    fake.set_manage_users(false);
    let read_only = put(json!({"title": "y"})).await;
    assert_eq!(read_only.status(), StatusCode::UNAUTHORIZED);
}
