//! Checks the fake Okta (`support::fake_okta`) itself against the documented behaviour
//! (`../shared/reference/idp-apis.md`, part A and the part C checklist), with plain reqwest —
//! so the tests of our Okta client meet Okta's behaviour, not our own idea of it.

use reqwest::header::HeaderMap;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::support::fake_okta::{FakeOkta, TestKey, ath};

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

fn ssws() -> String {
    "SSWS okta-test-token".to_owned()
}

/// `(rel, url)` of every `link` header, each header line on its own.
fn links(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .get_all("link")
        .iter()
        .map(|v| {
            let v = v.to_str().expect("ascii link");
            let (url, rel) = v.split_once(">; rel=\"").expect("link format");
            (
                rel.trim_end_matches('"').to_owned(),
                url.trim_start_matches('<').to_owned(),
            )
        })
        .collect()
}

fn next_link(headers: &HeaderMap) -> Option<String> {
    links(headers)
        .into_iter()
        .find(|(rel, _)| rel == "next")
        .map(|(_, url)| url)
}

async fn get(fake: &FakeOkta, path_and_query: &str) -> (StatusCode, HeaderMap, Value) {
    get_url(&format!("{}{path_and_query}", fake.url)).await
}

async fn get_url(url: &str) -> (StatusCode, HeaderMap, Value) {
    let resp = client()
        .get(url)
        .header("authorization", ssws())
        .header("accept", "application/json")
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.text().await.expect("body");
    (
        status,
        headers,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}

fn ids(users: &Value) -> Vec<String> {
    users
        .as_array()
        .expect("array")
        .iter()
        .map(|u| u["id"].as_str().expect("id").to_owned())
        .collect()
}

fn profile(first: &str, last: &str) -> Value {
    let login = format!(
        "{}.{}@example.com",
        first.to_lowercase(),
        last.to_lowercase()
    );
    json!({ "firstName": first, "lastName": last, "login": login, "email": login })
}

fn user_search_url(fake: &FakeOkta, search: &str) -> String {
    let mut url = url::Url::parse(&format!("{}/api/v1/users", fake.url)).expect("url");
    url.query_pairs_mut().append_pair("search", search);
    url.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn users_list_pages_with_separate_link_headers_and_opaque_cursors() {
    let fake = FakeOkta::start().await;
    for (id, first) in [
        ("00u5", "Eve"),
        ("00u1", "Ann"),
        ("00u3", "Cid"),
        ("00u2", "Bob"),
        ("00u4", "Dan"),
    ] {
        fake.add_user(id, "ACTIVE", profile(first, "Smith"));
    }

    let (status, headers, page1) = get(&fake, "/api/v1/users?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&page1), ["00u1", "00u2"], "sorted by id");
    // Two separate `link` header lines, absolute URLs on the fake's origin.
    assert_eq!(headers.get_all("link").iter().count(), 2);
    let all = links(&headers);
    assert_eq!(all[0].0, "self");
    assert_eq!(all[0].1, format!("{}/api/v1/users?limit=2", fake.url));
    let next1 = next_link(&headers).expect("next link on page 1");
    assert!(
        next1.starts_with(&format!("{}/api/v1/users?", fake.url)),
        "{next1}"
    );
    let after1 = url::Url::parse(&next1)
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "after")
        .expect("after")
        .1
        .into_owned();
    assert_ne!(after1, "00u2", "the cursor is opaque, not the last id");
    assert!(!after1.contains("00u2"), "{after1}");

    let (_, headers, page2) = get_url(&next1).await;
    assert_eq!(ids(&page2), ["00u3", "00u4"]);
    let next2 = next_link(&headers).expect("next link on page 2");
    assert_ne!(next1, next2);

    let (_, headers, page3) = get_url(&next2).await;
    assert_eq!(ids(&page3), ["00u5"]);
    assert_eq!(next_link(&headers), None, "no next link on the last page");
    assert_eq!(links(&headers).len(), 1, "only self");

    // The default limit is 200 and 200 is the cap.
    for i in 0..205 {
        fake.add_user(
            &format!("00v{i:03}"),
            "ACTIVE",
            profile("Bulk", &format!("U{i}")),
        );
    }
    let (_, headers, page) = get(&fake, "/api/v1/users").await;
    assert_eq!(page.as_array().expect("array").len(), 200);
    let next = next_link(&headers).expect("next");
    assert!(next.contains("limit=200"), "{next}");
    let (_, _, page) = get(&fake, "/api/v1/users?limit=500").await;
    assert_eq!(page.as_array().expect("array").len(), 200);

    // A forged cursor is refused.
    let (status, _, body) = get(&fake, "/api/v1/users?after=00u2").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(fake.count("/api/v1/users"), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn user_objects_have_the_documented_shape_and_common_headers() {
    let fake = FakeOkta::start().await;
    fake.add_user("00uA", "ACTIVE", profile("Alice", "Smith"));
    let (status, headers, users) = get(&fake, "/api/v1/users").await;
    assert_eq!(status, StatusCode::OK);
    let user = &users[0];
    for key in [
        "id",
        "status",
        "created",
        "activated",
        "statusChanged",
        "lastLogin",
        "lastUpdated",
        "passwordChanged",
        "type",
        "profile",
        "credentials",
        "_links",
    ] {
        assert!(user.get(key).is_some(), "{key} missing in {user}");
    }
    assert_eq!(user["created"], "2026-11-26T10:00:00.000Z");
    assert_eq!(user["lastUpdated"], "2026-11-26T10:00:00.000Z");
    assert_eq!(user["profile"]["login"], "alice.smith@example.com");
    assert_eq!(
        user["_links"],
        json!({ "self": { "href": format!("{}/api/v1/users/00uA", fake.url) } }),
        "collections carry only the self link"
    );
    assert_eq!(headers["date"], "Thu, 26 Nov 2026 10:00:00 GMT");
    assert_eq!(headers["x-rate-limit-limit"], "600");
    assert_eq!(headers["x-rate-limit-remaining"], "599");
    let reset: u64 = headers["x-rate-limit-reset"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("epoch seconds");
    assert_eq!(reset, (fake.now_ms() / 1000) as u64 + 60);
    assert!(headers.contains_key("x-okta-request-id"));

    // By id, by login, by login shortname; 404 E0000007 otherwise.
    for key in ["00uA", "alice.smith@example.com", "alice.smith"] {
        let (status, _, body) = get(&fake, &format!("/api/v1/users/{key}")).await;
        assert_eq!(status, StatusCode::OK, "{key}");
        assert_eq!(body["id"], "00uA");
    }
    let (status, _, body) = get(&fake, "/api/v1/users/00uNOPE").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errorCode"], "E0000007");
    assert_eq!(
        body["errorSummary"],
        "Not found: Resource not found: 00uNOPE (User)"
    );

    // A bad API token → 401 E0000011.
    let resp = client()
        .get(format!("{}/api/v1/users", fake.url))
        .header("authorization", "SSWS wrong")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key("x-rate-limit-remaining"));
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["errorCode"], "E0000011");
    assert_eq!(body["errorSummary"], "Invalid token provided");
    let resp = client()
        .get(format!("{}/api/v1/users", fake.url))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread")]
async fn deprovisioned_users_are_hidden_from_lists_but_found_by_search_and_filter() {
    let fake = FakeOkta::start().await;
    fake.add_user("00u1", "ACTIVE", profile("Ann", "A"));
    fake.add_user("00u2", "SUSPENDED", profile("Bob", "B"));
    fake.add_user("00u3", "ACTIVE", profile("Cid", "C"));
    fake.set_status("00u3", "DEPROVISIONED");

    let (_, _, list) = get(&fake, "/api/v1/users").await;
    assert_eq!(ids(&list), ["00u1", "00u2"]);

    let (status, _, found) = get_url(&user_search_url(&fake, r#"status eq "DEPROVISIONED""#)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&found), ["00u3"]);
    // Operators and string values are case-insensitive; property names are not.
    let (_, _, found) = get_url(&user_search_url(&fake, r#"status EQ "deprovisioned""#)).await;
    assert_eq!(ids(&found), ["00u3"]);
    let (status, _, body) = get_url(&user_search_url(&fake, r#"Status eq "ACTIVE""#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errorCode"], "E0000031");

    // filter= also returns DEPROVISIONED users (and only takes its documented subset).
    let (_, _, found) = get(
        &fake,
        "/api/v1/users?filter=status%20eq%20%22DEPROVISIONED%22",
    )
    .await;
    assert_eq!(ids(&found), ["00u3"]);
    let (status, _, _) = get(&fake, "/api/v1/users?filter=profile.city%20eq%20%22X%22").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Search combines and/or with parentheses.
    let (_, _, found) = get_url(&user_search_url(
        &fake,
        r#"profile.firstName sw "b" or (status eq "DEPROVISIONED" and profile.lastName eq "c")"#,
    ))
    .await;
    assert_eq!(ids(&found), ["00u2", "00u3"]);
    // `ne` is documented as unsupported; gibberish is a 400.
    for bad in [
        r#"status ne "ACTIVE""#,
        r#"status eq"#,
        r#"(status eq "ACTIVE""#,
    ] {
        let (status, _, body) = get_url(&user_search_url(&fake, bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["errorCode"], "E0000031", "{bad}");
    }

    // A hard-deleted user is gone from every list, and GET is a 404.
    fake.add_group("00gA", "SocialTalent");
    fake.add_member("00gA", "00u1");
    fake.delete_user("00u1");
    let (_, _, list) = get(&fake, "/api/v1/users").await;
    assert_eq!(ids(&list), ["00u2"]);
    let (_, _, found) = get_url(&user_search_url(&fake, r#"id eq "00u1""#)).await;
    assert_eq!(ids(&found), Vec::<String>::new());
    let (_, _, members) = get(&fake, "/api/v1/groups/00gA/users").await;
    assert_eq!(ids(&members), Vec::<String>::new());
    let (status, _, _) = get(&fake, "/api/v1/users/00u1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread")]
async fn search_by_last_updated_sees_changes_after_the_clock_moves() {
    let fake = FakeOkta::start().await;
    fake.add_user("00u1", "ACTIVE", profile("Ann", "A"));
    fake.add_user("00u2", "ACTIVE", profile("Bob", "B"));
    fake.add_user("00u3", "ACTIVE", profile("Cid", "C"));
    let watermark = fake.now();
    fake.add_group("00gA", "LP Sales");

    fake.advance_clock(60);
    fake.update_profile("00u2", json!({ "title": "Boss" }));
    fake.add_member("00gA", "00u3"); // does not touch lastUpdated
    fake.advance_clock(60);
    fake.set_status("00u1", "DEPROVISIONED");

    let search = format!(r#"lastUpdated gt "{watermark}""#);
    let (status, _, found) = get_url(&user_search_url(&fake, &search)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ids(&found),
        ["00u1", "00u2"],
        "the deactivation and the profile change"
    );
    let u1 = &found[0];
    assert_eq!(u1["status"], "DEPROVISIONED");
    assert_eq!(u1["lastUpdated"], "2026-11-26T10:02:00.000Z");
    assert_eq!(u1["statusChanged"], "2026-11-26T10:02:00.000Z");
    assert_eq!(
        fake.user("00u3").expect("user")["lastUpdated"],
        "2026-11-26T10:00:00.000Z",
        "a membership change leaves lastUpdated alone"
    );

    // ge / lt bounds, and a date that is not a date.
    let (_, _, found) = get_url(&user_search_url(
        &fake,
        r#"lastUpdated ge "2026-11-26T10:01:00.000Z" and lastUpdated lt "2026-11-26T10:02:00.000Z""#,
    ))
    .await;
    assert_eq!(ids(&found), ["00u2"]);
    let (status, _, _) = get_url(&user_search_url(&fake, r#"lastUpdated gt "yesterday""#)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Search pages too, and its next link carries the search, encoded.
    let (_, headers, found) =
        get_url(&format!("{}&limit=1", user_search_url(&fake, &search))).await;
    assert_eq!(ids(&found), ["00u1"]);
    let next = next_link(&headers).expect("next");
    assert!(next.contains("search=lastUpdated%20gt%20%22"), "{next}");
    let (_, headers, found) = get_url(&next).await;
    assert_eq!(ids(&found), ["00u2"]);
    assert_eq!(next_link(&headers), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn system_log_polling_always_has_a_next_link() {
    let fake = FakeOkta::start().await;
    fake.add_user("00u1", "ACTIVE", profile("Ann", "A"));
    fake.add_group("00gA", "LP Sales");
    fake.advance_clock(10);
    let since = fake.now();

    let filter = r#"eventType eq "group.user_membership.add" or eventType eq "group.user_membership.remove""#;
    let mut url = url::Url::parse(&format!("{}/api/v1/logs", fake.url)).expect("url");
    url.query_pairs_mut()
        .append_pair("since", &since)
        .append_pair("sortOrder", "ASCENDING")
        .append_pair("filter", filter);

    // Nothing yet: an empty page, but a next link all the same.
    let (status, headers, events) = get_url(url.as_str()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events, json!([]));
    let next = next_link(&headers).expect("polling always has next");
    assert!(
        !next.contains("since="),
        "since and after are exclusive: {next}"
    );
    assert_eq!(headers["x-rate-limit-limit"], "120");

    fake.advance_clock(5);
    fake.add_member("00gA", "00u1");
    fake.update_profile("00u1", json!({ "title": "x" })); // filtered out
    fake.remove_member("00gA", "00u1");

    let (_, headers, events) = get_url(&next).await;
    let types: Vec<&str> = events
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["eventType"].as_str().expect("eventType"))
        .collect();
    assert_eq!(
        types,
        ["group.user_membership.add", "group.user_membership.remove"]
    );
    let add = &events[0];
    assert!(add["uuid"].is_string());
    assert_eq!(add["published"], "2026-11-26T10:00:15.000Z");
    assert_eq!(add["outcome"]["result"], "SUCCESS");
    assert_eq!(add["target"][0]["id"], "00u1");
    assert_eq!(add["target"][0]["type"], "User");
    assert_eq!(add["target"][0]["alternateId"], "ann.a@example.com");
    assert_eq!(add["target"][0]["displayName"], "Ann A");
    assert_eq!(add["target"][1]["id"], "00gA");
    assert_eq!(add["target"][1]["type"], "UserGroup");
    assert_eq!(add["target"][1]["displayName"], "LP Sales");

    // Caught up: empty again, still a next link, and it does not replay.
    let next = next_link(&headers).expect("next");
    let (_, headers, events) = get_url(&next).await;
    assert_eq!(events, json!([]));
    let next = next_link(&headers).expect("still next");
    fake.add_member("00gA", "00u1");
    let (_, _, events) = get_url(&next).await;
    assert_eq!(events.as_array().expect("array").len(), 1);

    // Paging inside a poll: limit 1 over the 3 membership events since `since`.
    url.query_pairs_mut().append_pair("limit", "1");
    let (_, headers, events) = get_url(url.as_str()).await;
    assert_eq!(events.as_array().expect("array").len(), 1);
    assert!(next_link(&headers).is_some());

    // A bounded query (until given) ends without a next link; until is exclusive.
    let bounded = |until: String| {
        let mut bounded = url::Url::parse(&format!("{}/api/v1/logs", fake.url)).expect("url");
        bounded
            .query_pairs_mut()
            .append_pair("since", &since)
            .append_pair("until", &until)
            .append_pair("filter", filter);
        bounded.to_string()
    };
    let (_, _, events) = get_url(&bounded(fake.now())).await;
    assert_eq!(
        events,
        json!([]),
        "all three events were published at `until`"
    );
    fake.advance_clock(1);
    let (_, headers, events) = get_url(&bounded(fake.now())).await;
    assert_eq!(events.as_array().expect("array").len(), 3);
    assert_eq!(next_link(&headers), None);

    // `published` cannot be filtered on; since + after are exclusive.
    let (status, _, _) = get(
        &fake,
        "/api/v1/logs?filter=published%20gt%20%222026-01-01T00:00:00.000Z%22",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let after_with_since = format!("{next}&since={since}");
    let (status, _, _) = get_url(&after_with_since).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_and_faults_are_injected_as_okta_sends_them() {
    let fake = FakeOkta::start().await;
    fake.add_user("00u1", "ACTIVE", profile("Ann", "A"));
    let now_s = (fake.now_ms() / 1000) as u64;

    fake.rate_limit_next("/api/v1/users", 2, 42);
    for _ in 0..2 {
        let (status, headers, body) = get(&fake, "/api/v1/users").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(body["errorCode"], "E0000047");
        assert_eq!(
            body["errorSummary"],
            "API call exceeded rate limit due to too many requests."
        );
        assert_eq!(headers["x-rate-limit-limit"], "600");
        assert_eq!(headers["x-rate-limit-remaining"], "0");
        assert_eq!(
            headers["x-rate-limit-reset"],
            (now_s + 42).to_string().as_str()
        );
        assert!(
            headers.get("retry-after").is_none(),
            "Okta sends no Retry-After"
        );
    }
    let (status, _, _) = get(&fake, "/api/v1/users").await;
    assert_eq!(status, StatusCode::OK);

    fake.concurrent_limit_next("/api/v1/users", 1);
    let (status, headers, _) = get(&fake, "/api/v1/users").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["x-rate-limit-limit"], "0");
    assert_eq!(headers["x-rate-limit-remaining"], "0");

    fake.set_remaining(3, 17);
    fake.advance_clock(100);
    let (_, headers, _) = get(&fake, "/api/v1/users").await;
    assert_eq!(headers["x-rate-limit-remaining"], "3");
    assert_eq!(
        headers["x-rate-limit-reset"],
        (now_s + 100 + 17).to_string().as_str()
    );
    assert_eq!(headers["date"], "Thu, 26 Nov 2026 10:01:40 GMT");

    // 5xx bursts: 500 is Okta JSON, 503 an HTML page from the edge.
    fake.fail_next("/api/v1/users", 500, 1);
    fake.fail_next("/api/v1/users", 503, 1);
    let (status, _, body) = get(&fake, "/api/v1/users").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["errorCode"], "E0000009");
    let (status, headers, _) = get(&fake, "/api/v1/users").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        headers["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    // A fault on another prefix does not touch the users list.
    fake.fail_next("/api/v1/groups", 500, 1);
    let (status, _, _) = get(&fake, "/api/v1/users").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(&fake, "/api/v1/groups").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);

    // A truncated page: 200, but the JSON is cut in the middle.
    fake.truncate_next_page("/api/v1/users");
    let resp = client()
        .get(format!("{}/api/v1/users", fake.url))
        .header("authorization", ssws())
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.expect("complete HTTP body");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
    // An aborted page: the body breaks mid-stream.
    fake.abort_next_page("/api/v1/users");
    let resp = client()
        .get(format!("{}/api/v1/users", fake.url))
        .header("authorization", ssws())
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.is_err(), "the body read fails");
    // And the next one is fine again.
    let (status, _, body) = get(&fake, "/api/v1/users").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&body), ["00u1"]);

    let requests = fake.requests();
    let last = requests.last().expect("recorded");
    assert_eq!(last.method, "GET");
    assert_eq!(last.path, "/api/v1/users");
    assert_eq!(last.header("Authorization"), Some("SSWS okta-test-token"));
    assert!(requests.windows(2).all(|w| w[0].at <= w[1].at));
}

#[tokio::test(flavor = "multi_thread")]
async fn write_back_merges_the_profile_and_rejects_unknown_attributes() {
    let fake = FakeOkta::start().await;
    fake.add_user(
        "00u1",
        "ACTIVE",
        json!({ "firstName": "Ann", "lastName": "A", "login": "ann@example.com",
                "email": "ann@example.com", "title": "Rep" }),
    );
    fake.advance_clock(30);
    let post = |body: Value, target: &str| {
        client()
            .post(format!("{}/api/v1/users/{target}", fake.url))
            .header("authorization", ssws())
            .header("content-type", "application/json")
            .json(&body)
            .send()
    };

    // Unknown property → 400 E0000001 with the cause; nothing changes.
    let resp = post(json!({ "profile": { "saasUserId": "st-1" } }), "00u1")
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["errorCode"], "E0000001");
    assert_eq!(
        body["errorCauses"][0]["errorSummary"],
        "Property name 'saasUserId' is not defined in profile schema"
    );
    assert_eq!(
        fake.user("00u1").expect("user")["lastUpdated"],
        "2026-11-26T10:00:00.000Z"
    );

    // Once the schema has it, POST is a partial update returning the full user.
    fake.define_attribute("saasUserId");
    let resp = post(json!({ "profile": { "saasUserId": "st-1" } }), "00u1")
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    let user: Value = resp.json().await.expect("json");
    assert_eq!(user["id"], "00u1");
    assert_eq!(user["profile"]["saasUserId"], "st-1");
    assert_eq!(
        user["profile"]["title"], "Rep",
        "unspecified properties are kept"
    );
    assert_eq!(user["profile"]["firstName"], "Ann");
    assert_eq!(user["lastUpdated"], "2026-11-26T10:00:30.000Z");
    assert_eq!(
        fake.user("00u1").expect("user")["profile"]["saasUserId"],
        "st-1"
    );

    // By login too; unknown user → 404 E0000007; a body that is not JSON → 400.
    let resp = post(json!({ "profile": { "title": "Lead" } }), "ann@example.com")
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = post(json!({ "profile": { "title": "Lead" } }), "00uNOPE")
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["errorCode"], "E0000007");
    let resp = client()
        .post(format!("{}/api/v1/users/00u1", fake.url))
        .header("authorization", ssws())
        .header("content-type", "application/json")
        .body("{\"profile\":")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // The write-back is logged as a profile update.
    let (_, _, events) = get(
        &fake,
        "/api/v1/logs?filter=eventType%20eq%20%22user.account.update_profile%22",
    )
    .await;
    assert_eq!(events.as_array().expect("array").len(), 2);

    // A deactivated user's profile is locked unless the org allows it.
    fake.set_status("00u1", "DEPROVISIONED");
    let resp = post(json!({ "profile": { "title": "Gone" } }), "00u1")
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    fake.allow_deprovisioned_updates(true);
    let resp = post(json!({ "profile": { "title": "Gone" } }), "00u1")
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn groups_and_memberships() {
    let fake = FakeOkta::start().await;
    fake.add_user("00u1", "ACTIVE", profile("Ann", "A"));
    fake.add_user("00u2", "ACTIVE", profile("Bob", "B"));
    fake.add_user("00u3", "ACTIVE", profile("Cid", "C"));
    fake.add_group("00gB", "LP Sales");
    fake.add_group("00gA", "SocialTalent");
    fake.add_group("00gC", "Everyone");
    for user in ["00u1", "00u2", "00u3"] {
        fake.add_member("00gA", user);
    }
    fake.add_member("00gB", "00u2");

    let (status, _, groups) = get(&fake, "/api/v1/groups").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&groups), ["00gA", "00gB", "00gC"]);
    assert_eq!(groups[0]["type"], "OKTA_GROUP");
    assert_eq!(groups[0]["profile"]["name"], "SocialTalent");
    assert!(groups[0]["profile"].get("description").is_some());
    let (_, headers, groups) = get(&fake, "/api/v1/groups?limit=2").await;
    assert_eq!(ids(&groups), ["00gA", "00gB"]);
    let (_, _, groups) = get_url(&next_link(&headers).expect("next")).await;
    assert_eq!(ids(&groups), ["00gC"]);
    let (_, _, groups) = get(&fake, "/api/v1/groups?q=lp").await;
    assert_eq!(ids(&groups), ["00gB"]);

    let (_, headers, members) = get(&fake, "/api/v1/groups/00gA/users?limit=2").await;
    assert_eq!(ids(&members), ["00u1", "00u2"]);
    assert_eq!(
        members[0]["profile"]["login"], "ann.a@example.com",
        "full user objects"
    );
    let (_, headers2, members) = get_url(&next_link(&headers).expect("next")).await;
    assert_eq!(ids(&members), ["00u3"]);
    assert_eq!(next_link(&headers2), None);
    let (status, _, body) = get(&fake, "/api/v1/groups/00gNOPE/users").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["errorCode"], "E0000007");

    let (status, headers, groups) = get(&fake, "/api/v1/users/00u2/groups").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&groups), ["00gA", "00gB"]);
    assert_eq!(next_link(&headers), None);
}

/// Posts a client-credentials token request.
async fn token_request(
    fake: &FakeOkta,
    assertion: &str,
    scope: &str,
    dpop: Option<&str>,
) -> (StatusCode, HeaderMap, Value) {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "client_credentials")
        .append_pair("scope", scope)
        .append_pair(
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        )
        .append_pair("client_assertion", assertion)
        .finish();
    let mut request = client()
        .post(fake.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .header("accept", "application/json")
        .body(body);
    if let Some(proof) = dpop {
        request = request.header("dpop", proof);
    }
    let resp = request.send().await.expect("token request");
    let status = resp.status();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.expect("json"))
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint_private_key_jwt_with_rsa() {
    let fake = FakeOkta::start().await;
    fake.add_user("00u1", "ACTIVE", profile("Ann", "A"));
    let key = TestKey::rsa();
    fake.register_service_app("0oaRSA", &key.public_pem, false);
    fake.grant_scopes("0oaRSA", &["okta.users.read", "okta.groups.read"]);
    let token_url = fake.token_url();

    // Signed by another key → invalid_client.
    let other = TestKey::rsa();
    let (status, _, body) = token_request(
        &fake,
        &other.client_assertion("0oaRSA", &token_url),
        "okta.users.read",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    // Wrong audience → invalid_client.
    let (status, _, body) = token_request(
        &fake,
        &key.client_assertion("0oaRSA", &format!("{}/oauth2/default/v1/token", fake.url)),
        "okta.users.read",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    // Unknown client → invalid_client.
    let (status, _, body) = token_request(
        &fake,
        &key.client_assertion("0oaNOPE", &token_url),
        "okta.users.read",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    // A scope not granted → invalid_scope.
    let (status, _, body) = token_request(
        &fake,
        &key.client_assertion("0oaRSA", &token_url),
        "okta.users.read okta.logs.read",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_scope");

    // Right → a Bearer token for an hour.
    let assertion = key.client_assertion("0oaRSA", &token_url);
    let (status, headers, body) = token_request(&fake, &assertion, "okta.users.read", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "okta.users.read");
    assert_eq!(headers["cache-control"], "no-store");
    let token = body["access_token"].as_str().expect("token").to_owned();
    // The same assertion (same jti) is not accepted twice.
    let (status, _, _) = token_request(&fake, &assertion, "okta.users.read", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let call = |path: &str, auth: String| {
        client()
            .get(format!("{}{path}", fake.url))
            .header("authorization", auth)
            .send()
    };
    let resp = call("/api/v1/users", format!("Bearer {token}"))
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::OK);
    // The token lacks okta.groups.read → 403 E0000006 naming the scope.
    let resp = call("/api/v1/groups", format!("Bearer {token}"))
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"okta.groups.read\""),
        "{challenge}"
    );
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["errorCode"], "E0000006");
    // A made-up token → 401 E0000011.
    let resp = call("/api/v1/users", "Bearer nope".to_owned())
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["errorCode"], "E0000011");
    // After an hour on the fake clock the token has expired.
    fake.advance_clock(3600);
    let resp = call("/api/v1/users", format!("Bearer {token}"))
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // An EC (ES256) service app works the same way.
    let ec = TestKey::ec_p256();
    fake.register_service_app("0oaEC", &ec.public_pem, false);
    let (status, _, body) = token_request(
        &fake,
        &ec.client_assertion("0oaEC", &token_url),
        "okta.users.read",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint_dpop_nonce_round_and_dpop_bound_api_calls() {
    let fake = FakeOkta::start().await;
    fake.add_user("00u1", "ACTIVE", profile("Ann", "A"));
    let client_key = TestKey::rsa();
    let dpop_key = TestKey::ec_p256();
    fake.register_service_app("0oaDPOP", &client_key.public_pem, true);
    let token_url = fake.token_url();
    let scope = "okta.users.read";

    // No DPoP header at all → 400 invalid_dpop_proof (okta-sdk-dotnet#697).
    let (status, headers, body) = token_request(
        &fake,
        &client_key.client_assertion("0oaDPOP", &token_url),
        scope,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_dpop_proof");
    assert!(headers.get("dpop-nonce").is_none());

    // A proof without a nonce → 400 use_dpop_nonce + the nonce (A7).
    let assertion = client_key.client_assertion("0oaDPOP", &token_url);
    let proof = dpop_key.dpop_proof("POST", &token_url, None, None);
    let (status, headers, body) = token_request(&fake, &assertion, scope, Some(&proof)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "use_dpop_nonce");
    assert_eq!(
        body["error_description"],
        "Authorization server requires nonce in DPoP proof."
    );
    let nonce = headers["dpop-nonce"].to_str().expect("ascii").to_owned();
    assert_eq!(nonce, fake.dpop_nonce());

    // A proof with a wrong htu is refused.
    let proof = dpop_key.dpop_proof(
        "POST",
        &format!("{}/oauth2/v1/tokens", fake.url),
        Some(&nonce),
        None,
    );
    let (status, _, body) = token_request(&fake, &assertion, scope, Some(&proof)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_dpop_proof");

    // The retry with the nonce → a DPoP token.
    let proof = dpop_key.dpop_proof("POST", &token_url, Some(&nonce), None);
    let (status, _, body) = token_request(&fake, &assertion, scope, Some(&proof)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "DPoP");
    let token = body["access_token"].as_str().expect("token").to_owned();

    let users_url = format!("{}/api/v1/users", fake.url);
    let call = |auth: String, proof: Option<String>| {
        let mut request = client()
            .get(format!("{users_url}?limit=5"))
            .header("authorization", auth);
        if let Some(proof) = proof {
            request = request.header("dpop", proof);
        }
        request.send()
    };
    // As a Bearer token, or without a proof → 401 with a DPoP challenge.
    let resp = call(format!("Bearer {token}"), None).await.expect("call");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(challenge.starts_with("DPoP "), "{challenge}");
    assert!(
        challenge.contains("error=\"invalid_dpop_proof\""),
        "{challenge}"
    );
    let resp = call(format!("DPoP {token}"), None).await.expect("call");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // A proof whose htu carries the query, or without ath, or by another key → 401.
    for proof in [
        dpop_key.dpop_proof("GET", &format!("{users_url}?limit=5"), None, Some(&token)),
        dpop_key.dpop_proof("GET", &users_url, None, None),
        dpop_key.dpop_proof("POST", &users_url, None, Some(&token)),
        TestKey::ec_p256().dpop_proof("GET", &users_url, None, Some(&token)),
    ] {
        let resp = call(format!("DPoP {token}"), Some(proof))
            .await
            .expect("call");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert!(
            resp.headers()["www-authenticate"]
                .to_str()
                .expect("ascii")
                .contains("invalid_dpop_proof")
        );
    }
    // Right: DPoP scheme + a fresh proof with htm, htu (no query) and ath.
    let proof = dpop_key.dpop_proof("GET", &users_url, None, Some(&token));
    let resp = call(format!("DPoP {token}"), Some(proof.clone()))
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::OK);
    let users: Value = resp.json().await.expect("json");
    assert_eq!(ids(&users), ["00u1"]);
    // The same proof again is a replay.
    let resp = call(format!("DPoP {token}"), Some(proof))
        .await
        .expect("call");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let recorded = fake.requests();
    let ok = recorded
        .iter()
        .rev()
        .find(|r| r.path == "/api/v1/users")
        .expect("recorded");
    assert!(ok.header("dpop").is_some());
    assert_eq!(ath(&token).len(), 43, "base64url SHA-256 without padding");
}

/// The fake also runs on a paused current-thread runtime (for backoff tests): a delayed
/// response costs tokio time, not wall time.
#[tokio::test(start_paused = true)]
async fn works_on_a_paused_runtime() {
    let fake = FakeOkta::start().await;
    fake.add_user("00u1", "ACTIVE", profile("Ann", "A"));
    fake.delay_next("/api/v1/users", std::time::Duration::from_secs(30), 1);
    let started = tokio::time::Instant::now();
    let wall = std::time::Instant::now();
    let (status, _, users) = get(&fake, "/api/v1/users").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&users), ["00u1"]);
    assert!(started.elapsed() >= std::time::Duration::from_secs(30));
    assert!(wall.elapsed() < std::time::Duration::from_secs(10));
}
