//! The OneLogin source end to end: the real binary reads the fake OneLogin (built from
//! OneLogin's documented behaviour) and writes to the real SCIM peer. A full run over several
//! pages, incremental runs that see profile, status and role changes, deletions caught by
//! full runs, token expiry, faults that abort before any write, write-back, bad records.

use serde_json::{Value, json};

use crate::support::fake_onelogin::{CLIENT_ID, CLIENT_SECRET, FakeOneLogin};
use crate::support::peer::EXT_URN;
use crate::support::{EXAMPLE_MAPPING, Workspace, ops};

const SOCIALTALENT: u64 = 10;
const LP_ONBOARDING: u64 = 11;
const EVERYONE: u64 = 12;
const ADMINS_GROUP: u64 = 20;

/// A small account: a manager and four reports in the SocialTalent role, a learning-path
/// role, an admins group; plus `filler` people outside scope, so that a full read takes
/// several pages of 100.
async fn account(filler: u64) -> FakeOneLogin {
    let onelogin = FakeOneLogin::start().await;
    onelogin.add_role(SOCIALTALENT, "SocialTalent");
    onelogin.add_role(LP_ONBOARDING, "LP Onboarding");
    onelogin.add_role(EVERYONE, "Everyone Else");
    onelogin.add_group(ADMINS_GROUP, "SocialTalent Admins");
    let person = |id: u64, first: &str, last: &str, department: &str, manager: Option<u64>| {
        let email = format!(
            "{}.{}@northwind.example",
            first.to_lowercase(),
            last.to_lowercase()
        );
        json!({
            "username": email.split('@').next(), "email": email, "firstname": first,
            "lastname": last, "department": department, "title": "Recruiter",
            "manager_user_id": manager, "role_ids": [SOCIALTALENT],
            "custom_attributes": {"customerId": format!("C-{id}"), "isManager": null},
        })
    };
    let mut lead = person(101, "Ana", "Li", "Sales", None);
    lead["custom_attributes"]["isManager"] = json!("true");
    onelogin.add_user(101, lead);
    let mut zoe = person(102, "Zoe", "Odegard", "Sales", Some(101));
    zoe["role_ids"] = json!([SOCIALTALENT, LP_ONBOARDING]);
    onelogin.add_user(102, zoe);
    let mut bo = person(103, "Bo", "Berg", "Sales", Some(101));
    bo["status"] = json!(4); // Password expired: still active.
    onelogin.add_user(103, bo);
    let mut cy = person(104, "Cy", "Dahl", "Marketing", Some(101));
    cy["group_id"] = json!(ADMINS_GROUP);
    onelogin.add_user(104, cy);
    let mut di = person(105, "Di", "Eng", "Sales", None);
    di["status"] = json!(0); // Unactivated: not provisioned by default.
    onelogin.add_user(105, di);
    for n in 0..filler {
        onelogin.add_user(
            1000 + n,
            json!({"username": format!("filler{n}"), "email": format!("filler{n}@northwind.example"),
                "firstname": "Fill", "lastname": format!("Er{n}"), "role_ids": [EVERYONE]}),
        );
    }
    onelogin
}

fn mapping() -> String {
    EXAMPLE_MAPPING
        .replace(
            "user.attrs.customerId",
            "user.attrs.custom_attributes.customerId",
        )
        .replace(
            "user.attrs.isManager",
            "user.attrs.custom_attributes.isManager",
        )
}

fn source(onelogin: &FakeOneLogin, secret: &str) -> String {
    format!(
        "[source]\nkind = \"onelogin\"\n[source.onelogin]\napi_url = \"{}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{secret}\"\ngroups = [\"SocialTalent*\", \"LP *\"]\n",
        onelogin.url
    )
}

fn workspace(onelogin: &FakeOneLogin) -> Workspace {
    let mut ws = Workspace::new();
    ws.source = source(onelogin, CLIENT_SECRET);
    ws.mapping = mapping();
    ws
}

fn writes(report: &Value) -> Vec<(String, String)> {
    ops(report)
        .into_iter()
        .filter(|(op, _)| op != "skip")
        .collect()
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

fn by_idp(report: &Value, idp_id: &str) -> Value {
    report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|action| action["idp_id"] == idp_id)
        .cloned()
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_run_then_incremental_runs_follow_onelogin() {
    let onelogin = account(230).await;
    let ws = workspace(&onelogin);
    // A 429 in the middle of the paged read is waited out.
    onelogin.rate_limit_after("/api/2/users", 1, Some(1));
    let first = ws.sync(&[], 0);
    assert_eq!(first["source"]["kind"], "onelogin");
    assert_eq!(first["source"]["full"], true);
    assert_eq!(first["source"]["users_read"], 235);
    assert_eq!(
        writes(&first),
        pairs(&[
            ("create", "101"),
            ("create", "102"),
            ("create", "103"),
            ("create", "104")
        ])
    );
    let users_requests: Vec<_> = onelogin
        .requests()
        .into_iter()
        .filter(|request| request.path == "/api/2/users")
        .collect();
    assert!(users_requests.len() >= 4, "three pages and the retried one");
    for request in &users_requests {
        let fields = request.param("fields").expect("fields on every page");
        assert!(fields.contains("role_ids") && fields.contains("custom_attributes"));
        assert_eq!(request.param("limit").as_deref(), Some("100"));
    }
    let zoe = ws
        .peer
        .user_by_name("zoe.odegard@northwind.example")
        .await
        .expect("created");
    assert_eq!(zoe["externalId"], "102");
    assert_eq!(zoe[EXT_URN]["reportsTo"], "ana.li@northwind.example");
    assert_eq!(zoe[EXT_URN]["learningPaths"], json!(["Onboarding"]));
    assert_eq!(zoe[EXT_URN]["udf_Customer_ID"], "C-102");
    let ana = ws
        .peer
        .user_by_name("ana.li@northwind.example")
        .await
        .expect("created");
    assert_eq!(ana[EXT_URN]["role"], "advisor");
    let cy = ws
        .peer
        .user_by_name("cy.dahl@northwind.example")
        .await
        .expect("created");
    assert_eq!(cy[EXT_URN]["role"], "company_admin", "the group's name");

    // Nothing changed: an incremental run plans nothing and asks little of OneLogin.
    onelogin.advance_clock(600);
    onelogin.clear_requests();
    let quiet = ws.sync(&[], 0);
    assert_eq!(quiet["source"]["full"], false);
    assert_eq!(writes(&quiet), vec![]);
    // The overlap re-reads the users stamped when the first run began (one page of 100 here,
    // then the rest): at most three pages.
    assert!(onelogin.count("/api/2/users") <= 3);

    // A profile change, a suspension and a role assigned without touching updated_at.
    onelogin.advance_clock(600);
    onelogin.update_user(103, json!({"department": "Marketing"}));
    onelogin.update_user(104, json!({"status": 2}));
    onelogin.assign_role(101, LP_ONBOARDING);
    onelogin.advance_clock(60);
    onelogin.clear_requests();
    let changed = ws.sync(&[], 0);
    assert_eq!(changed["source"]["full"], false);
    assert_eq!(
        writes(&changed),
        pairs(&[("deactivate", "104"), ("update", "101"), ("update", "103")])
    );
    assert_eq!(
        by_idp(&changed, "101")["changes"][0]["attribute"],
        "learningPaths"
    );
    assert!(onelogin.count("/api/2/users") <= 3);
    let ana = ws
        .peer
        .user_by_name("ana.li@northwind.example")
        .await
        .expect("exists");
    assert_eq!(ana[EXT_URN]["learningPaths"], json!(["Onboarding"]));
    let bo = ws
        .peer
        .user_by_name("bo.berg@northwind.example")
        .await
        .expect("exists");
    assert_eq!(bo[EXT_URN]["coreTeam"], "Marketing");
    assert!(
        ws.peer
            .user_by_name("cy.dahl@northwind.example")
            .await
            .is_none(),
        "suspended: deactivated"
    );

    // Unsuspended: reactivated; a role removed: an update.
    onelogin.advance_clock(600);
    onelogin.update_user(104, json!({"status": 1}));
    onelogin.remove_role(102, LP_ONBOARDING);
    onelogin.advance_clock(60);
    let back = ws.sync(&[], 0);
    assert_eq!(
        writes(&back),
        pairs(&[("reactivate", "104"), ("update", "102")])
    );
    let zoe = ws
        .peer
        .user_by_name("zoe.odegard@northwind.example")
        .await
        .expect("exists");
    assert!(zoe[EXT_URN].get("learningPaths").is_none(), "{zoe}");

    // Settled: one request to the users endpoint.
    onelogin.advance_clock(600);
    onelogin.clear_requests();
    assert_eq!(writes(&ws.sync(&[], 0)), vec![]);
    assert_eq!(onelogin.count("/api/2/users"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_user_is_caught_by_the_next_full_run() {
    let onelogin = account(0).await;
    let ws = workspace(&onelogin);
    ws.sync(&[], 0);
    onelogin.advance_clock(600);
    onelogin.delete_user(103);
    onelogin.advance_clock(60);
    // A deleted user vanishes from updated_since and from its role's members; looked up by
    // id it is not there either, so the incremental run leaves it alone.
    let incremental = ws.sync(&[], 0);
    assert_eq!(incremental["source"]["full"], false);
    assert_eq!(writes(&incremental), vec![]);
    let full = ws.sync(&["--full"], 0);
    assert_eq!(full["source"]["full"], true);
    assert_eq!(writes(&full), pairs(&[("deactivate", "103")]));
    assert_eq!(by_idp(&full, "103")["reason"], "no longer in source");
    assert!(
        ws.peer
            .user_by_name("bo.berg@northwind.example")
            .await
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_or_failing_page_aborts_before_any_write() {
    let onelogin = account(150).await;
    let ws = workspace(&onelogin);
    onelogin.truncate_next_page("/api/2/users");
    let run = ws.run(&["sync", "--output", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("/api/2/users"), "{}", run.stderr);
    assert!(run.stderr.contains("cut off"), "{}", run.stderr);
    assert!(ws.peer.users().await.is_empty(), "nothing written");

    // Every attempt (the first and five retries) fails.
    onelogin.fail_next("/api/1/groups", 500, 6);
    let run = ws.run(&["sync", "--output", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("/api/1/groups"), "{}", run.stderr);
    assert!(ws.peer.users().await.is_empty(), "nothing written");

    // OneLogin healthy again: the next run converges.
    assert_eq!(ws.sync(&[], 0)["summary"]["create"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_replaced_once_mid_run() {
    let onelogin = account(250).await;
    let ws = workspace(&onelogin);
    onelogin.expire_tokens_after(2);
    let report = ws.sync(&[], 0);
    assert_eq!(report["summary"]["create"], 4);
    assert_eq!(
        onelogin.tokens_issued(),
        2,
        "one new token, not one per request"
    );
    for request in onelogin.requests() {
        if request.path == "/auth/oauth2/v2/token" {
            assert!(
                request
                    .authorization
                    .as_deref()
                    .is_some_and(|h| h.starts_with("Basic ")),
                "the credential goes as HTTP Basic"
            );
        } else {
            assert!(
                request
                    .authorization
                    .as_deref()
                    .is_some_and(|h| h.starts_with("Bearer "))
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_of_a_deleted_admin_fail_fast_with_a_hint() {
    let onelogin = account(0).await;
    onelogin.delete_admin();
    let ws = workspace(&onelogin);
    let run = ws.run(&["sync", "--output", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot authenticate to OneLogin"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("API Credentials"), "{}", run.stderr);
    assert!(onelogin.count("/auth/oauth2/v2/token") <= 3);
    assert!(!run.stderr.contains(CLIENT_SECRET));
    assert!(ws.peer.users().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_reset_beyond_fifteen_minutes_fails_the_run_with_its_time() {
    let onelogin = account(0).await;
    let ws = workspace(&onelogin);
    onelogin.rate_limit_next("/api/2/users", 1, Some(3000));
    let run = ws.run(&["sync", "--output", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("used up until 20"), "{}", run.stderr);
    assert!(ws.peer.users().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_skipped_and_reported_and_the_others_go_on() {
    let onelogin = account(0).await;
    onelogin.add_raw_record(
        106,
        json!({"id": 106, "username": "no.mail", "email": null, "status": 1, "state": 1,
            "role_ids": [SOCIALTALENT]}),
    );
    onelogin.add_raw_record(
        107,
        json!({"id": "x-107", "username": "odd.id", "email": "odd@northwind.example",
            "status": 1, "state": 1}),
    );
    let ws = workspace(&onelogin);
    let report = ws.sync(&[], 0);
    assert_eq!(report["summary"]["create"], 4);
    let text = report.to_string();
    assert!(text.contains("106") && text.contains("email"), "{report:#}");
    assert!(
        text.contains("x-107") && text.contains("integer"),
        "{report:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socialtalent_ids_are_written_back_into_a_custom_attribute() {
    let onelogin = account(0).await;
    let mut ws = workspace(&onelogin);
    ws.sections = "[writeback]\nattribute = \"custom_attributes.socialTalentId\"\n".into();
    // The custom attribute does not exist yet: the write-back fails with advice.
    let failed = ws.sync(&[], 1);
    assert_eq!(failed["summary"]["create"], 4);
    let writeback = failed["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|action| action["op"] == "writeback")
        .expect("a write-back")
        .clone();
    assert_eq!(writeback["result"], "failed");
    assert!(
        writeback["error"]
            .as_str()
            .is_some_and(|error| error.contains("Custom User Fields")),
        "{writeback}"
    );

    onelogin.define_custom_field("socialTalentId");
    onelogin.advance_clock(600);
    let done = ws.sync(&[], 0);
    assert_eq!(done["summary"]["writebacks"], 4, "{done:#}");
    let scim_id = ws
        .peer
        .user_by_name("zoe.odegard@northwind.example")
        .await
        .expect("created")["id"]
        .clone();
    assert_eq!(
        onelogin.user(102).expect("user")["custom_attributes"]["socialTalentId"],
        scim_id
    );
    assert!(
        onelogin
            .requests()
            .iter()
            .any(|r| r.method == "PUT" && r.path == "/api/2/users/102")
    );
    onelogin.advance_clock(600);
    assert_eq!(
        ws.sync(&["--full"], 0)["summary"]["writebacks"],
        0,
        "only when it differs"
    );

    // A credential with "Read users" only is told what it needs.
    let onelogin = account(0).await;
    onelogin.set_manage_users(false);
    onelogin.define_custom_field("socialTalentId");
    let mut ws = workspace(&onelogin);
    ws.sections = "[writeback]\nattribute = \"custom_attributes.socialTalentId\"\n".into();
    let refused = ws.sync(&[], 1);
    assert!(refused.to_string().contains("Manage users"), "{refused:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_and_check_config_work_against_onelogin() {
    let onelogin = account(0).await;
    let ws = workspace(&onelogin);
    for wanted in ["102", "zoe.odegard", "ZOE.ODEGARD@northwind.example"] {
        let preview = ws.run(&["preview", wanted, "--output", "json"]);
        assert_eq!(preview.code, 0, "{wanted}: {}", preview.stderr);
        assert_eq!(preview.json["user"]["id"], "102", "{wanted}");
        assert_eq!(preview.json["user"]["status"], "active");
        assert_eq!(
            preview.json["user"]["groups"],
            json!(["LP Onboarding", "SocialTalent"])
        );
        assert_eq!(
            preview.json["payload"][EXT_URN]["reportsTo"],
            "ana.li@northwind.example"
        );
        assert_eq!(preview.json["action"]["op"], "create");
    }
    let check = ws.run(&["check-config", "--connect"]);
    assert_eq!(check.code, 0, "{}\n{}", check.stdout, check.stderr);
    assert!(check.stdout.contains("3 role(s)"), "{}", check.stdout);

    let mut bad = workspace(&onelogin);
    bad.source = source(&onelogin, "not-the-secret");
    let check = bad.run(&["check-config", "--connect"]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    assert!(check.stderr.contains("client_secret"), "{}", check.stderr);
    assert!(
        !check.stderr.contains("not-the-secret"),
        "never prints the secret"
    );

    onelogin.set_read_users(false);
    let check = ws.run(&["check-config", "--connect"]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    assert!(
        check.stderr.contains("Read users"),
        "names the permission: {}",
        check.stderr
    );
}
