//! Checks the fake Graph (`support::fake_graph`) itself against the documented behaviour
//! (`../shared/reference/idp-apis.md`, part B and the part C checklist), with plain reqwest — so
//! the tests of our Entra ID client meet Graph's behaviour, not our own idea of it.

use jsonwebtoken::Algorithm;
use reqwest::header::HeaderMap;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::support::fake_graph::{
    ExpiryMode, FakeGraph, JWT_BEARER, ON_PREMISES_MASTERED, SYNC_STATE_NOT_FOUND, TestCert,
    Thumbprint,
};

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

struct Got {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn get_with(url: &str, token: &str, extra: &[(&str, &str)]) -> Got {
    let mut request = client()
        .get(url)
        .header("authorization", format!("Bearer {token}"));
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let resp = request.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    Got {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

async fn get(fake: &FakeGraph, token: &str, path_and_query: &str) -> Got {
    get_with(&format!("{}{path_and_query}", fake.url), token, &[]).await
}

async fn patch(fake: &FakeGraph, token: &str, path: &str, body: &Value) -> Got {
    let resp = client()
        .patch(format!("{}{path}", fake.url))
        .header("authorization", format!("Bearer {token}"))
        .json(body)
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    Got {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

fn form_body(form: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish()
}

async fn token_request(fake: &FakeGraph, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let resp = client()
        .post(fake.token_url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(form))
        .send()
        .await
        .expect("token request");
    let status = resp.status();
    (status, resp.json().await.expect("json"))
}

/// The AADSTS code of an identity-platform error, after checking the documented shape (B7).
fn aadsts(body: &Value) -> u64 {
    for key in [
        "error",
        "error_description",
        "timestamp",
        "trace_id",
        "correlation_id",
    ] {
        assert!(body[key].is_string(), "{key} missing in {body}");
    }
    let code = body["error_codes"][0].as_u64().expect("error_codes");
    let description = body["error_description"].as_str().expect("description");
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    assert!(description.contains("\r\nTrace ID: "), "{description}");
    code
}

fn ids(page: &Value) -> Vec<String> {
    page["value"]
        .as_array()
        .expect("value")
        .iter()
        .map(|u| u["id"].as_str().expect("id").to_owned())
        .collect()
}

fn item<'a>(page: &'a Value, id: &str) -> &'a Value {
    page["value"]
        .as_array()
        .expect("value")
        .iter()
        .find(|u| u["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {page}"))
}

fn person(first: &str, last: &str) -> Value {
    let upn = format!(
        "{}.{}@contoso.example",
        first.to_lowercase(),
        last.to_lowercase()
    );
    json!({
        "userPrincipalName": upn,
        "mail": upn,
        "givenName": first,
        "surname": last,
        "displayName": format!("{first} {last}"),
    })
}

/// Follows the nextLinks of a delta round; returns the pages and the deltaLink.
async fn delta_round(first_url: &str, token: &str, extra: &[(&str, &str)]) -> (Vec<Value>, String) {
    let mut url = first_url.to_owned();
    let mut pages = Vec::new();
    loop {
        let got = get_with(&url, token, extra).await;
        assert_eq!(got.status, StatusCode::OK, "{}", got.body);
        let page = got.body;
        let next = page["@odata.nextLink"].as_str().map(str::to_owned);
        let delta = page["@odata.deltaLink"].as_str().map(str::to_owned);
        pages.push(page);
        match (next, delta) {
            (Some(next), None) => url = next,
            (None, Some(delta)) => return (pages, delta),
            (next, delta) => panic!("a page has exactly one link: {next:?} {delta:?}"),
        }
    }
}

fn all_items(pages: &[Value]) -> Vec<Value> {
    pages
        .iter()
        .flat_map(|p| p["value"].as_array().expect("value").clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn token_by_client_secret_and_the_documented_errors() {
    let fake = FakeGraph::start().await;
    fake.register_app_secret("app-1", "s3cret~value");
    fake.add_user("u1", person("Ann", "Smith"));
    let scope = fake.scope();

    // Secret in the form (B7).
    let form = [
        ("client_id", "app-1"),
        ("scope", scope.as_str()),
        ("client_secret", "s3cret~value"),
        ("grant_type", "client_credentials"),
    ];
    let (status, body) = token_request(&fake, &form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    let token = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(fake.tokens_issued(), 1);

    // The secret as HTTP Basic.
    let resp = client()
        .post(fake.token_url())
        .basic_auth("app-1", Some("s3cret~value"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&[
            ("scope", scope.as_str()),
            ("grant_type", "client_credentials"),
        ]))
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("x-ms-request-id"));

    // Errors.
    let mut bad = form;
    bad[2].1 = "wrong";
    let (status, body) = token_request(&fake, &bad).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(aadsts(&body), 7000215);
    let mut bad = form;
    bad[1].1 = "https://graph.microsoft.com/User.Read.All";
    let (status, body) = token_request(&fake, &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_scope");
    assert_eq!(aadsts(&body), 70011);
    let mut bad = form;
    bad[0].1 = "app-nope";
    let (status, body) = token_request(&fake, &bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "unauthorized_client");
    assert_eq!(aadsts(&body), 700016);
    let (status, body) = token_request(&fake, &form[..3]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(aadsts(&body), 900144, "missing grant_type");
    let (status, body) = token_request(&fake, &[form[0], form[1], form[3]]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(aadsts(&body), 7000218, "no credential");
    let resp = client()
        .post(format!("{}/tenant-nope/oauth2/v2.0/token", fake.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form_body(&form))
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(aadsts(&resp.json().await.expect("json")), 90002);
    assert_eq!(fake.tokens_issued(), 2);

    // The token opens Graph; every response carries request-id, client-request-id, Date.
    let got = get_with(
        &format!("{}/v1.0/users", fake.url),
        &token,
        &[("client-request-id", "abc-123")],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(ids(&got.body), ["u1"]);
    assert_eq!(got.headers["client-request-id"], "abc-123");
    assert!(got.headers.contains_key("request-id"));
    assert!(got.headers.contains_key("date"));

    // No token, a made-up one, an expired one → 401 InvalidAuthenticationToken (B10 envelope).
    let resp = client()
        .get(format!("{}/v1.0/users", fake.url))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key("www-authenticate"));
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    assert_eq!(body["error"]["message"], "Access token is empty.");
    assert!(body["error"]["innerError"]["request-id"].is_string());
    assert!(body["error"]["innerError"]["date"].is_string());
    let got = get(&fake, "not.a.token", "/v1.0/users").await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    fake.expire_access_tokens();
    let got = get(&fake, &token, "/v1.0/users").await;
    assert_eq!(got.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        got.body["error"]["message"],
        "Lifetime validation failed, the token is expired."
    );

    // Without the permission the call needs → 403 Authorization_RequestDenied.
    fake.grant_permissions("app-1", &["User.Read.All"]);
    let (_, body) = token_request(&fake, &form).await;
    let token = body["access_token"].as_str().expect("token");
    assert_eq!(
        get(&fake, token, "/v1.0/users").await.status,
        StatusCode::OK
    );
    let got = get(&fake, token, "/v1.0/groups").await;
    assert_eq!(got.status, StatusCode::FORBIDDEN);
    assert_eq!(got.body["error"]["code"], "Authorization_RequestDenied");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_by_certificate_assertion() {
    let fake = FakeGraph::start().await;
    let cert = TestCert::fixture();
    fake.register_app_certificate("app-cert", &cert.cert_pem);
    let scope = fake.scope();
    let token_url = fake.token_url();
    let request = |assertion: String| {
        let fake = &fake;
        let scope = scope.clone();
        async move {
            token_request(
                fake,
                &[
                    ("client_id", "app-cert"),
                    ("scope", scope.as_str()),
                    ("client_assertion_type", JWT_BEARER),
                    ("client_assertion", assertion.as_str()),
                    ("grant_type", "client_credentials"),
                ],
            )
            .await
        }
    };

    // The current doc's form: PS256 + x5t#S256.
    let (status, body) = request(cert.client_assertion("app-cert", &token_url)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    // The older form: RS256 + x5t (SHA-1).
    let claims = TestCert::claims("app-cert", &token_url);
    let assertion = cert.sign(&cert.header(Algorithm::RS256, Thumbprint::Sha1), &claims);
    let (status, body) = request(assertion).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Signed by another key under this certificate's thumbprint → invalid signature.
    let foreign = crate::support::fake_okta::TestKey::rsa();
    let impostor = TestCert::from_pem(&cert.cert_pem, &foreign.private_pem);
    let (status, body) = request(impostor.client_assertion("app-cert", &token_url)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(aadsts(&body), 700027);
    // A certificate the app does not have → 700027 "not registered".
    let other = FakeGraph::start().await;
    other.register_app_certificate("app-cert", &TestCert::other_fixture_cert_pem());
    let (status, body) = token_request(
        &other,
        &[
            ("client_id", "app-cert"),
            ("scope", other.scope().as_str()),
            ("client_assertion_type", JWT_BEARER),
            (
                "client_assertion",
                cert.client_assertion("app-cert", &other.token_url())
                    .as_str(),
            ),
            ("grant_type", "client_credentials"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(aadsts(&body), 700027);
    assert!(
        body["error_description"]
            .as_str()
            .expect("text")
            .contains("not registered"),
        "{body}"
    );
    // Wrong audience, wrong issuer, expired, no thumbprint.
    let header = cert.header(Algorithm::PS256, Thumbprint::Sha256);
    let mut claims = TestCert::claims(
        "app-cert",
        "https://login.microsoftonline.com/x/oauth2/v2.0/token",
    );
    let (_, body) = request(cert.sign(&header, &claims)).await;
    assert_eq!(aadsts(&body), 700023, "audience");
    claims = TestCert::claims("app-other", &token_url);
    let (_, body) = request(cert.sign(&header, &claims)).await;
    assert_eq!(aadsts(&body), 700021, "issuer");
    claims = TestCert::claims("app-cert", &token_url);
    let exp = claims["exp"].as_i64().expect("exp");
    claims["nbf"] = json!(exp - 7200);
    claims["exp"] = json!(exp - 3600);
    let (status, body) = request(cert.sign(&header, &claims)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(aadsts(&body), 700024, "expired");
    let (_, body) = request(cert.sign(
        &jsonwebtoken::Header::new(Algorithm::PS256),
        &TestCert::claims("app-cert", &token_url),
    ))
    .await;
    assert_eq!(aadsts(&body), 700027, "no x5t");
    assert_eq!(fake.tokens_issued(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn users_delta_pages_to_a_delta_link_and_selects_properties() {
    let fake = FakeGraph::start().await;
    let token = fake.issue_token();
    for (id, first) in [
        ("u1", "Ann"),
        ("u2", "Bob"),
        ("u3", "Cid"),
        ("u4", "Dan"),
        ("u5", "Eve"),
    ] {
        fake.add_user(id, person(first, "Smith"));
    }
    fake.update_user("u1", json!({ "department": "Sales" }));
    fake.set_page_size(2);

    let select = "$select=displayName,mail,department,accountEnabled";
    let first = format!("{}/v1.0/users/delta?{select}", fake.url);
    let (pages, delta_link) = delta_round(&first, &token, &[]).await;
    assert_eq!(pages.len(), 3);
    for page in &pages[..2] {
        let next = page["@odata.nextLink"].as_str().expect("next");
        assert!(next.contains("$skiptoken="), "{next}");
        assert!(page.get("@odata.deltaLink").is_none());
    }
    assert!(
        delta_link.contains("/v1.0/users/delta?$deltatoken="),
        "{delta_link}"
    );
    assert!(pages[2].get("@odata.nextLink").is_none());
    let users = all_items(&pages);
    assert_eq!(users.len(), 5);
    let ann = &users[0];
    assert_eq!(ann["id"], "u1");
    assert_eq!(ann["displayName"], "Ann Smith");
    assert_eq!(ann["department"], "Sales");
    assert_eq!(ann["accountEnabled"], true);
    assert!(ann.get("givenName").is_none(), "not selected: {ann}");
    assert!(
        users[1].get("department").is_none(),
        "never set → omitted: {}",
        users[1]
    );

    // Nothing changed: an empty round, but a new deltaLink all the same (B4).
    let (pages, next_link) = delta_round(&delta_link, &token, &[]).await;
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0]["value"], json!([]));
    assert_ne!(next_link, delta_link);

    // $deltatoken=latest → a deltaLink and no data; it sees changes made after it.
    let got = get(
        &fake,
        &token,
        &format!("/v1.0/users/delta?{select}&$deltatoken=latest"),
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["value"], json!([]));
    let latest = got.body["@odata.deltaLink"]
        .as_str()
        .expect("deltaLink")
        .to_owned();
    fake.update_user("u4", json!({ "displayName": "Dan Jones" }));
    let (pages, _) = delta_round(&latest, &token, &[]).await;
    assert_eq!(ids(&pages[0]), ["u4"]);
    assert_eq!(pages[0]["value"][0]["mail"], "dan.smith@contoso.example");

    // $expand and $orderby are not supported with delta; an unknown property is a 400.
    let got = get(&fake, &token, "/v1.0/users/delta?$expand=manager").await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    let got = get(
        &fake,
        &token,
        "/v1.0/users/delta?$select=displayName,favouriteColour",
    )
    .await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    // $filter=id eq … narrows a round.
    let got = get(
        &fake,
        &token,
        "/v1.0/users/delta?$filter=id%20eq%20'u2'%20or%20id%20eq%20'u5'",
    )
    .await;
    assert_eq!(ids(&got.body), ["u2", "u5"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn later_rounds_return_changes_in_full_or_minimal_form() {
    let fake = FakeGraph::start().await;
    let token = fake.issue_token();
    fake.add_user("u1", person("Ann", "Smith"));
    fake.add_user("u2", person("Bob", "Smith"));
    fake.add_user("u3", person("Cid", "Smith"));
    fake.update_user("u3", json!({ "department": "Ops" }));
    let first = format!(
        "{}/v1.0/users/delta?$select=displayName,mail,department,accountEnabled",
        fake.url
    );
    let (_, delta_link) = delta_round(&first, &token, &[]).await;

    fake.update_user("u1", json!({ "department": "Sales" }));
    fake.update_user("u2", json!({ "jobTitle": "Boss" })); // not selected: u2 does not appear
    fake.update_user("u3", json!({ "department": null })); // cleared
    fake.add_user("u4", person("Dan", "Smith"));

    // Default: all selected properties of a changed user; cleared ones null, never-set omitted.
    let (pages, _) = delta_round(&delta_link, &token, &[]).await;
    let page = &pages[0];
    assert_eq!(ids(page), ["u1", "u3", "u4"]);
    assert_eq!(
        item(page, "u1"),
        &json!({
            "displayName": "Ann Smith",
            "mail": "ann.smith@contoso.example",
            "department": "Sales",
            "accountEnabled": true,
            "id": "u1",
        })
    );
    assert_eq!(item(page, "u3")["department"], Value::Null);
    assert_eq!(item(page, "u3")["displayName"], "Cid Smith");
    assert!(item(page, "u4").get("department").is_none());

    // Prefer: return=minimal → only the changed properties (a new user still in full).
    let got = get_with(&delta_link, &token, &[("prefer", "return=minimal")]).await;
    assert_eq!(got.headers["preference-applied"], "return=minimal");
    let page = &got.body;
    assert_eq!(
        item(page, "u1"),
        &json!({ "department": "Sales", "id": "u1" })
    );
    assert_eq!(item(page, "u3"), &json!({ "department": null, "id": "u3" }));
    assert_eq!(item(page, "u4")["displayName"], "Dan Smith");
    assert!(got.body["@odata.deltaLink"].is_string());

    // A PATCH is a change too.
    let (_, link) = delta_round(&delta_link, &token, &[]).await;
    let got = patch(
        &fake,
        &token,
        "/v1.0/users/u2",
        &json!({ "department": "HR" }),
    )
    .await;
    assert_eq!(got.status, StatusCode::NO_CONTENT);
    let got = get_with(&link, &token, &[("prefer", "return=minimal")]).await;
    assert_eq!(
        got.body["value"],
        json!([{ "department": "HR", "id": "u2" }])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_users_are_annotated_and_restored_ones_are_not() {
    let fake = FakeGraph::start().await;
    let token = fake.issue_token();
    for (id, first) in [("u1", "Ann"), ("u2", "Bob"), ("u3", "Cid")] {
        fake.add_user(id, person(first, "Smith"));
    }
    let first = format!("{}/v1.0/users/delta?$select=displayName,mail", fake.url);
    let (_, link) = delta_round(&first, &token, &[]).await;

    fake.soft_delete("u1");
    fake.hard_delete("u2");
    let (pages, link) = delta_round(&link, &token, &[]).await;
    assert_eq!(
        pages[0]["value"],
        json!([
            { "id": "u1", "@removed": { "reason": "changed" } },
            { "id": "u2", "@removed": { "reason": "deleted" } },
        ])
    );
    // Soft-deleted users are gone from reads.
    let got = get(&fake, &token, "/v1.0/users/u1").await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.body["error"]["code"], "Request_ResourceNotFound");
    let got = get(&fake, &token, "/v1.0/users").await;
    assert_eq!(ids(&got.body), ["u3"]);
    // Nor are they in a new initial round.
    let (pages, _) = delta_round(&first, &token, &[]).await;
    assert_eq!(ids(&pages[0]), ["u3"]);

    // Restored: back with no annotation, in full.
    fake.restore("u1");
    let (pages, _) = delta_round(&link, &token, &[("prefer", "return=minimal")]).await;
    assert_eq!(
        pages[0]["value"],
        json!([{ "displayName": "Ann Smith", "mail": "ann.smith@contoso.example", "id": "u1" }])
    );
    assert_eq!(fake.user("u2"), None);
    assert_eq!(
        get(&fake, &token, "/v1.0/users/u1").await.status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn manager_delta_and_manager_reads() {
    let fake = FakeGraph::start().await;
    let token = fake.issue_token();
    for (id, first) in [("u1", "Ann"), ("u2", "Bob"), ("u3", "Cid")] {
        fake.add_user(id, person(first, "Smith"));
    }
    fake.set_manager("u2", Some("u1"));
    let first = format!("{}/v1.0/users/delta?$select=displayName,manager", fake.url);
    let (pages, link) = delta_round(&first, &token, &[]).await;
    let page = &pages[0];
    assert_eq!(
        item(page, "u2")["manager@delta"],
        json!([{ "@odata.type": "#microsoft.graph.user", "id": "u1" }])
    );
    assert!(item(page, "u1").get("manager@delta").is_none());

    // A new manager, and a removed one (the item carries @removed).
    fake.set_manager("u3", Some("u2"));
    fake.set_manager("u2", None);
    let (pages, _) = delta_round(&link, &token, &[("prefer", "return=minimal")]).await;
    assert_eq!(
        pages[0]["value"],
        json!([
            { "id": "u3", "manager@delta": [{ "@odata.type": "#microsoft.graph.user", "id": "u2" }] },
            {
                "id": "u2",
                "manager@delta": [{
                    "@odata.type": "#microsoft.graph.user",
                    "id": "u1",
                    "@removed": { "reason": "deleted" },
                }],
            },
        ])
    );
    // Without manager in $select a manager change does not show.
    let plain = format!("{}/v1.0/users/delta?$select=displayName", fake.url);
    let (_, plain_link) = delta_round(&plain, &token, &[]).await;
    fake.set_manager("u1", Some("u3"));
    let (pages, _) = delta_round(&plain_link, &token, &[]).await;
    assert_eq!(pages[0]["value"], json!([]));

    // GET /users/{id}/manager; 404 when none (B3); $expand=manager; lookup by UPN.
    let got = get(&fake, &token, "/v1.0/users/u3/manager").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["@odata.type"], "#microsoft.graph.user");
    assert_eq!(got.body["id"], "u2");
    assert_eq!(got.body["userPrincipalName"], "bob.smith@contoso.example");
    let got = get(&fake, &token, "/v1.0/users/u2/manager").await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    assert_eq!(got.body["error"]["code"], "Request_ResourceNotFound");
    assert_eq!(
        got.body["error"]["message"],
        "Resource 'manager' does not exist or one of its queried reference-property objects are not present."
    );
    let got = get(
        &fake,
        &token,
        "/v1.0/users/CID.SMITH@contoso.example?$select=id,mail&$expand=manager($select=id,mail)",
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(got.body["id"], "u3");
    assert!(got.body.get("displayName").is_none());
    assert_eq!(
        got.body["manager"],
        json!({ "@odata.type": "#microsoft.graph.user", "id": "u2", "mail": "bob.smith@contoso.example" })
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn group_delta_members_and_group_reads() {
    let fake = FakeGraph::start().await;
    let token = fake.issue_token();
    for (id, first) in [("u1", "Ann"), ("u2", "Bob"), ("u3", "Cid"), ("u4", "Dan")] {
        fake.add_user(id, person(first, "Smith"));
    }
    fake.add_group("g1", "LP Sales");
    fake.add_group("g2", "SocialTalent");
    for u in ["u1", "u2", "u3"] {
        fake.add_member("g1", u);
    }
    fake.add_member("g2", "u4");
    fake.set_page_size(2);

    let first = format!("{}/v1.0/groups/delta?$select=displayName,members", fake.url);
    let (pages, link) = delta_round(&first, &token, &[]).await;
    // g1 has three members: split over two pages, the same group object again (B5).
    assert_eq!(
        pages[0]["value"],
        json!([{
            "displayName": "LP Sales",
            "id": "g1",
            "members@delta": [
                { "@odata.type": "#microsoft.graph.user", "id": "u1" },
                { "@odata.type": "#microsoft.graph.user", "id": "u2" },
            ],
        }])
    );
    let rest = all_items(&pages[1..]);
    assert_eq!(rest[0]["id"], "g1");
    assert_eq!(
        rest[0]["members@delta"],
        json!([{ "@odata.type": "#microsoft.graph.user", "id": "u3" }])
    );
    assert_eq!(rest[1]["id"], "g2");
    assert_eq!(rest[1]["displayName"], "SocialTalent");

    // Membership changes: id + members@delta only, removals with @removed.
    fake.add_member("g2", "u1");
    fake.remove_member("g1", "u2");
    fake.add_member("g1", "u4");
    fake.remove_member("g1", "u4"); // net nothing
    let (pages, link) = delta_round(&link, &token, &[]).await;
    let items = all_items(&pages);
    assert_eq!(
        items,
        [
            json!({ "id": "g2", "members@delta": [{ "@odata.type": "#microsoft.graph.user", "id": "u1" }] }),
            json!({
                "id": "g1",
                "members@delta": [{
                    "@odata.type": "#microsoft.graph.user",
                    "id": "u2",
                    "@removed": { "reason": "deleted" },
                }],
            }),
        ]
    );
    // A hard-deleted user leaves its groups.
    fake.hard_delete("u4");
    let (pages, _) = delta_round(&link, &token, &[]).await;
    assert_eq!(
        pages[0]["value"][0]["members@delta"][0],
        json!({ "@odata.type": "#microsoft.graph.user", "id": "u4", "@removed": { "reason": "deleted" } })
    );

    // Reads: /groups (filter, paging), /groups/{id}/members, /users/{id}/memberOf.
    let got = get(
        &fake,
        &token,
        "/v1.0/groups?$filter=displayName%20eq%20'lp%20sales'",
    )
    .await;
    assert_eq!(ids(&got.body), ["g1"]);
    let got = get(&fake, &token, "/v1.0/groups?$select=displayName&$top=1").await;
    assert_eq!(
        got.body["value"],
        json!([{ "id": "g1", "displayName": "LP Sales" }])
    );
    let next = got.body["@odata.nextLink"]
        .as_str()
        .expect("next")
        .to_owned();
    let got = get_with(&next, &token, &[]).await;
    assert_eq!(ids(&got.body), ["g2"]);
    assert!(got.body.get("@odata.nextLink").is_none());
    let got = get(&fake, &token, "/v1.0/groups/g1/members?$select=id,mail").await;
    assert_eq!(
        got.body["value"],
        json!([
            { "@odata.type": "#microsoft.graph.user", "id": "u1", "mail": "ann.smith@contoso.example" },
            { "@odata.type": "#microsoft.graph.user", "id": "u3", "mail": "cid.smith@contoso.example" },
        ])
    );
    let got = get(&fake, &token, "/v1.0/users/u1/memberOf?$select=displayName").await;
    assert_eq!(
        got.body["value"],
        json!([
            { "@odata.type": "#microsoft.graph.group", "id": "g1", "displayName": "LP Sales" },
            { "@odata.type": "#microsoft.graph.group", "id": "g2", "displayName": "SocialTalent" },
        ])
    );
}

/// Nested groups (B5): a group's members are directory objects, groups among them; group delta
/// lists them in `members@delta` with `#microsoft.graph.group`, additions and `@removed`
/// removals alike; `memberOf` stays direct, `transitiveMemberOf` follows every chain and ends
/// on a cycle.
#[tokio::test(flavor = "multi_thread")]
async fn nested_groups_in_group_delta_and_transitive_member_of() {
    let fake = FakeGraph::start().await;
    let token = fake.issue_token();
    fake.add_user("u1", person("Ann", "Smith"));
    fake.add_user("u2", person("Bob", "Smith"));
    fake.add_group("g1", "SocialTalent");
    fake.add_group("g2", "Sales EMEA");
    fake.add_group("g3", "Sales Dublin");
    fake.add_member("g1", "u1");
    fake.add_member("g3", "u2");
    fake.add_group_member("g1", "g2");
    fake.add_group_member("g2", "g3");

    let first = format!("{}/v1.0/groups/delta?$select=displayName,members", fake.url);
    let (pages, link) = delta_round(&first, &token, &[]).await;
    let items = all_items(&pages);
    assert_eq!(
        items[0]["members@delta"],
        json!([
            { "@odata.type": "#microsoft.graph.user", "id": "u1" },
            { "@odata.type": "#microsoft.graph.group", "id": "g2" },
        ])
    );
    assert_eq!(
        items[1]["members@delta"],
        json!([{ "@odata.type": "#microsoft.graph.group", "id": "g3" }])
    );

    // memberOf is direct; transitiveMemberOf climbs the chain.
    let got = get(&fake, &token, "/v1.0/users/u2/memberOf?$select=id").await;
    assert_eq!(ids(&got.body), ["g3"]);
    let got = get(
        &fake,
        &token,
        "/v1.0/users/u2/transitiveMemberOf?$select=id,displayName",
    )
    .await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.body);
    assert_eq!(ids(&got.body), ["g1", "g2", "g3"]);
    assert_eq!(
        got.body["value"][1]["@odata.type"],
        "#microsoft.graph.group"
    );
    assert_eq!(got.body["value"][1]["displayName"], "Sales EMEA");
    let got = get(&fake, &token, "/v1.0/users/u2/transitiveMemberOf?$top=2").await;
    assert_eq!(ids(&got.body), ["g1", "g2"]);
    let next = got.body["@odata.nextLink"]
        .as_str()
        .expect("next")
        .to_owned();
    assert_eq!(ids(&get_with(&next, &token, &[]).await.body), ["g3"]);
    // /groups/{id}/members lists users and groups, not expanded.
    let got = get(&fake, &token, "/v1.0/groups/g1/members?$select=id").await;
    assert_eq!(
        got.body["value"],
        json!([
            { "@odata.type": "#microsoft.graph.group", "id": "g2" },
            { "@odata.type": "#microsoft.graph.user", "id": "u1" },
        ])
    );

    // A cycle: g1 in g3 as well. transitiveMemberOf ends.
    fake.add_group_member("g3", "g1");
    let got = get(
        &fake,
        &token,
        "/v1.0/users/u1/transitiveMemberOf?$select=id",
    )
    .await;
    assert_eq!(ids(&got.body), ["g1", "g2", "g3"]);
    assert_eq!(fake.transitive_groups("u2"), ["g1", "g2", "g3"]);

    // Later rounds: a nested group added and removed, as the net difference.
    fake.remove_group_member("g2", "g3");
    let (pages, link) = delta_round(&link, &token, &[]).await;
    assert_eq!(
        all_items(&pages),
        [
            json!({ "id": "g3", "members@delta": [{ "@odata.type": "#microsoft.graph.group", "id": "g1" }] }),
            json!({ "id": "g2", "members@delta": [{
                "@odata.type": "#microsoft.graph.group", "id": "g3", "@removed": { "reason": "deleted" }
            }] }),
        ]
    );
    // A deleted group: `@removed`, and its parent reports it gone from its members.
    fake.delete_group("g2");
    let (pages, _) = delta_round(&link, &token, &[]).await;
    assert_eq!(
        all_items(&pages),
        [
            json!({ "id": "g2", "@removed": { "reason": "deleted" } }),
            json!({ "id": "g1", "members@delta": [{
                "@odata.type": "#microsoft.graph.group", "id": "g2", "@removed": { "reason": "deleted" }
            }] }),
        ]
    );
    assert_eq!(fake.transitive_groups("u1"), ["g1", "g3"]);
    assert_eq!(fake.transitive_groups("u2"), ["g3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_delta_tokens_in_both_forms() {
    let fake = FakeGraph::start().await;
    let token = fake.issue_token();
    for (id, first) in [("u1", "Ann"), ("u2", "Bob"), ("u3", "Cid")] {
        fake.add_user(id, person(first, "Smith"));
    }
    fake.set_page_size(2);
    let first = format!("{}/v1.0/users/delta?$select=displayName,mail", fake.url);
    let got = get_with(&first, &token, &[]).await;
    let next = got.body["@odata.nextLink"]
        .as_str()
        .expect("next")
        .to_owned();
    let (_, delta_link) = delta_round(&first, &token, &[]).await;

    // 400 syncStateNotFound for the deltaLink and for a skiptoken (B4, devblog).
    fake.expire_delta_tokens(ExpiryMode::BadRequest400);
    for url in [&delta_link, &next] {
        let got = get_with(url, &token, &[]).await;
        assert_eq!(got.status, StatusCode::BAD_REQUEST, "{url}");
        assert_eq!(got.body["error"]["code"], "syncStateNotFound");
        assert_eq!(got.body["error"]["message"], SYNC_STATE_NOT_FOUND);
    }
    // A forged token is refused the same way.
    let got = get(&fake, &token, "/v1.0/users/delta?$deltatoken=bm9wZQ").await;
    assert_eq!(got.body["error"]["code"], "syncStateNotFound");

    // 410 Gone with Location: the initial query with an empty $deltaToken, which starts over.
    let (_, delta_link) = delta_round(&first, &token, &[]).await;
    fake.expire_delta_tokens(ExpiryMode::Gone410);
    let got = get_with(&delta_link, &token, &[]).await;
    assert_eq!(got.status, StatusCode::GONE);
    let location = got.headers["location"].to_str().expect("ascii").to_owned();
    assert_eq!(
        location,
        format!(
            "{}/v1.0/users/delta?$select=displayName,mail&$deltaToken=",
            fake.url
        )
    );
    let (pages, _) = delta_round(&location, &token, &[]).await;
    assert_eq!(all_items(&pages).len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn throttling_faults_and_list_queries() {
    let fake = FakeGraph::start().await;
    let token = fake.issue_token();
    for (id, first) in [("u1", "Ann"), ("u2", "Bob"), ("u3", "Cid")] {
        fake.add_user(id, person(first, "Smith"));
    }

    // 429 with the Retry-After exactly as given, fractional included (B8).
    fake.throttle_next("/v1.0/users/delta", 1, "0.5");
    let got = get(&fake, &token, "/v1.0/users/delta").await;
    assert_eq!(got.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(got.headers["retry-after"], "0.5");
    assert!(got.headers.contains_key("x-ms-throttle-scope"));
    assert_eq!(got.body["error"]["code"], "TooManyRequests");
    assert_eq!(got.body["error"]["message"], "Please retry again later.");
    assert_eq!(got.body["error"]["innerError"]["status"], "429");
    assert_eq!(
        get(&fake, &token, "/v1.0/users/delta").await.status,
        StatusCode::OK
    );
    fake.unavailable_next("/v1.0/users", 1, "2");
    let got = get(&fake, &token, "/v1.0/users").await;
    assert_eq!(got.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(got.headers["retry-after"], "2");
    fake.fail_next("/v1.0/users", 500, 2);
    assert_eq!(
        get(&fake, &token, "/v1.0/users").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get(&fake, &token, "/v1.0/users").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    fake.truncate_next_page("/v1.0/users");
    let got = get(&fake, &token, "/v1.0/users").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body.is_string(), "not JSON: {}", got.body);
    assert_eq!(fake.count("/v1.0/users/delta"), 2);
    assert_eq!(fake.count("/v1.0/users"), 6);

    // $top: 1..999 (B2).
    let got = get(&fake, &token, "/v1.0/users?$top=1000").await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert_eq!(got.body["error"]["code"], "Request_UnsupportedQuery");
    assert_eq!(
        got.body["error"]["message"],
        "Invalid page size specified: '1000'. Must be between 1 and 999 inclusive."
    );
    // Default properties, paging with the whole URL, filters.
    let got = get(&fake, &token, "/v1.0/users?$top=2").await;
    let user = &got.body["value"][0];
    for key in [
        "businessPhones",
        "displayName",
        "givenName",
        "jobTitle",
        "mail",
        "mobilePhone",
        "officeLocation",
        "preferredLanguage",
        "surname",
        "userPrincipalName",
        "id",
    ] {
        assert!(user.get(key).is_some(), "{key} missing in {user}");
    }
    assert_eq!(user["jobTitle"], Value::Null);
    assert_eq!(user["businessPhones"], json!([]));
    assert!(user.get("accountEnabled").is_none(), "only on $select");
    let next = got.body["@odata.nextLink"].as_str().expect("next");
    assert!(
        next.contains("$top=2") && next.contains("$skiptoken="),
        "{next}"
    );
    let got = get_with(next, &token, &[]).await;
    assert_eq!(ids(&got.body), ["u3"]);
    let got = get(
        &fake,
        &token,
        "/v1.0/users?$filter=mail%20eq%20'BOB.SMITH@contoso.example'",
    )
    .await;
    assert_eq!(ids(&got.body), ["u2"]);
    let got = get(
        &fake,
        &token,
        "/v1.0/users?$filter=userPrincipalName%20in%20('ann.smith@contoso.example','cid.smith@contoso.example')",
    )
    .await;
    assert_eq!(ids(&got.body), ["u1", "u3"]);
    // endsWith is an advanced query (B2).
    let path = "/v1.0/users?$filter=endsWith(mail,'@contoso.example')&$count=true";
    let got = get(&fake, &token, path).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert_eq!(got.body["error"]["code"], "Request_UnsupportedQuery");
    let got = get_with(
        &format!("{}{path}", fake.url),
        &token,
        &[("consistencylevel", "eventual")],
    )
    .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body["@odata.count"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_merges_and_refuses_on_premises_mastered_properties() {
    let fake = FakeGraph::start().await;
    let token = fake.issue_token();
    fake.add_user("u1", person("Ann", "Smith"));
    fake.add_user("u2", person("Bob", "Smith"));
    let ext = "extension_b7d8e648520f41d3b9c0fdeb91768a0a_socialTalentId";

    let got = patch(
        &fake,
        &token,
        "/v1.0/users/u1",
        &json!({
            "jobTitle": "Engineer",
            ext: "st-1",
            "onPremisesExtensionAttributes": { "extensionAttribute1": "a", "extensionAttribute2": "b" },
        }),
    )
    .await;
    assert_eq!(got.status, StatusCode::NO_CONTENT, "{}", got.body);
    assert_eq!(got.body, Value::String(String::new()));
    // Merge: others keep their values; null clears, per key inside the complex property.
    let got = patch(
        &fake,
        &token,
        "/v1.0/users/ann.smith@contoso.example",
        &json!({ "jobTitle": null, "onPremisesExtensionAttributes": { "extensionAttribute1": null } }),
    )
    .await;
    assert_eq!(got.status, StatusCode::NO_CONTENT);
    let stored = fake.user("u1").expect("user");
    assert_eq!(stored["givenName"], "Ann");
    assert!(stored.get("jobTitle").is_none());
    assert_eq!(stored[ext], "st-1");
    assert_eq!(
        stored["onPremisesExtensionAttributes"],
        json!({ "extensionAttribute2": "b" })
    );
    // Directory extensions come back only on $select; the complex property with all 15 keys.
    let got = get(&fake, &token, "/v1.0/users/u1").await;
    assert!(got.body.get(ext).is_none());
    let got = get(
        &fake,
        &token,
        &format!("/v1.0/users/u1?$select={ext},onPremisesExtensionAttributes"),
    )
    .await;
    assert_eq!(got.body[ext], "st-1");
    let attrs = &got.body["onPremisesExtensionAttributes"];
    assert_eq!(attrs.as_object().expect("object").len(), 15);
    assert_eq!(attrs["extensionAttribute2"], "b");
    assert_eq!(attrs["extensionAttribute1"], Value::Null);

    // Refused: unknown property, read-only property, over-long value, unknown user.
    let got = patch(
        &fake,
        &token,
        "/v1.0/users/u1",
        &json!({ "favouriteColour": "red" }),
    )
    .await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert_eq!(got.body["error"]["code"], "Request_BadRequest");
    let got = patch(&fake, &token, "/v1.0/users/u1", &json!({ "id": "x" })).await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    let got = patch(
        &fake,
        &token,
        "/v1.0/users/u1",
        &json!({ "employeeId": "12345678901234567" }),
    )
    .await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    let got = patch(
        &fake,
        &token,
        "/v1.0/users/nope",
        &json!({ "jobTitle": "x" }),
    )
    .await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);

    // An on-premises synced user: extensionAttributes refused (B6), directory extensions fine.
    fake.set_on_premises_sync("u2", true);
    let got = patch(
        &fake,
        &token,
        "/v1.0/users/u2",
        &json!({ "onPremisesExtensionAttributes": { "extensionAttribute1": "x" } }),
    )
    .await;
    assert_eq!(got.status, StatusCode::BAD_REQUEST);
    assert_eq!(got.body["error"]["code"], "Request_BadRequest");
    assert_eq!(got.body["error"]["message"], ON_PREMISES_MASTERED);
    let got = patch(&fake, &token, "/v1.0/users/u2", &json!({ ext: "st-2" })).await;
    assert_eq!(got.status, StatusCode::NO_CONTENT);
    assert_eq!(fake.user("u2").expect("user")[ext], "st-2");

    // The writes are recorded.
    let patches: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(patches.len(), 8);
    assert_eq!(patches[0].body_json().expect("json")[ext], "st-1");
}

#[tokio::test(flavor = "multi_thread")]
async fn delta_replays_an_item_already_sent() {
    let fake = FakeGraph::start().await;
    let token = fake.issue_token();
    for (id, first) in [("u1", "Ann"), ("u2", "Bob"), ("u3", "Cid")] {
        fake.add_user(id, person(first, "Smith"));
    }
    fake.set_page_size(2);
    let got = get(&fake, &token, "/v1.0/users/delta?$select=displayName").await;
    assert_eq!(ids(&got.body), ["u1", "u2"]);
    fake.replay_next_delta();
    let next = got.body["@odata.nextLink"].as_str().expect("next");
    let got = get_with(next, &token, &[]).await;
    assert_eq!(ids(&got.body), ["u2", "u3"], "u2 again");
    assert!(got.body["@odata.deltaLink"].is_string());
}

/// The fake also runs on a paused current-thread runtime (for backoff tests): a delayed
/// response costs tokio time, not wall time.
#[tokio::test(start_paused = true)]
async fn works_on_a_paused_runtime() {
    let fake = FakeGraph::start().await;
    let token = fake.issue_token();
    fake.add_user("u1", person("Ann", "Smith"));
    fake.delay_next("/v1.0/users", std::time::Duration::from_secs(30), 1);
    let started = tokio::time::Instant::now();
    let wall = std::time::Instant::now();
    let got = get(&fake, &token, "/v1.0/users").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(ids(&got.body), ["u1"]);
    assert!(started.elapsed() >= std::time::Duration::from_secs(30));
    assert!(wall.elapsed() < std::time::Duration::from_secs(10));
}
