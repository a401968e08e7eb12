//! Bidirectional sync end to end: SocialTalent (the real SCIM peer) pre-seeded with accounts
//! before the first run, drift on managed and unmanaged attributes, orphans under both policies,
//! and write-back of SocialTalent's id into the fake Okta.

use serde_json::{Value, json};

use crate::support::fake_okta::FakeOkta;
use crate::support::peer::{EXT_URN, USER_URN};
use crate::support::{Workspace, ops};

fn read_back(ws: &mut Workspace, extra: &str) {
    ws.reconcile = format!("read_back = true\n{extra}");
}

fn seed(user_name: &str, external_id: Option<&str>, email: Option<&str>) -> Value {
    let mut body = json!({"schemas": [USER_URN], "userName": user_name, "active": true});
    if let Some(external_id) = external_id {
        body["externalId"] = json!(external_id);
    }
    if let Some(email) = email {
        body["emails"] = json!([{"value": email, "type": "work", "primary": true}]);
    }
    body
}

fn accounts_of(users: &[Value], external_id: &str) -> usize {
    users
        .iter()
        .filter(|user| user["externalId"] == external_id)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_accounts_are_adopted_by_each_key_and_never_duplicated() {
    let mut ws = Workspace::new();
    read_back(&mut ws, "");
    let by_external_id = ws
        .peer
        .create(seed("zoe.before@legacy.example", Some("E1007"), None))
        .await;
    let by_user_name = ws
        .peer
        .create(seed("OLIVER.BENNETT@northwind.example", None, None))
        .await;
    let by_email = ws
        .peer
        .create(seed(
            "freya.l@legacy.example",
            None,
            Some("Freya.Lindqvist@northwind.example"),
        ))
        .await;
    ws.peer
        .create(seed(
            "chloe.1@legacy.example",
            None,
            Some("chloe.dubois@northwind.example"),
        ))
        .await;
    ws.peer
        .create(seed(
            "chloe.2@legacy.example",
            None,
            Some("chloe.dubois@northwind.example"),
        ))
        .await;
    let ghost = ws
        .peer
        .create(seed("ghost@northwind.example", None, None))
        .await;

    let report = ws.sync(&[], 0);
    let summary = &report["summary"];
    assert_eq!(summary["adopted"], 3, "{report:#}");
    assert_eq!(summary["create"], 17);
    assert_eq!(
        summary["orphans"], 1,
        "only ghost: the two chloe accounts match an IdP user (ambiguously), so they are no orphans"
    );
    let mut adopted: Vec<(String, String)> = report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|action| action["op"] == "adopt")
        .map(|action| {
            (
                action["idp_id"].as_str().expect("id").to_owned(),
                action["scim_id"].as_str().expect("scim id").to_owned(),
            )
        })
        .collect();
    adopted.sort();
    assert_eq!(
        adopted,
        vec![
            (
                "E1007".to_owned(),
                by_external_id["id"].as_str().expect("id").to_owned()
            ),
            (
                "E1009".to_owned(),
                by_user_name["id"].as_str().expect("id").to_owned()
            ),
            (
                "E1010".to_owned(),
                by_email["id"].as_str().expect("id").to_owned()
            ),
        ]
    );
    let chloe = ops(&report)
        .into_iter()
        .find(|(_, id)| id == "E1011")
        .expect("Chloé's action");
    assert_eq!(chloe.0, "skip", "two accounts with her email: not guessed");
    let orphans: Vec<&str> = report["orphans"]
        .as_array()
        .expect("orphans")
        .iter()
        .map(|orphan| orphan["userName"].as_str().expect("userName"))
        .collect();
    assert!(orphans.contains(&"ghost@northwind.example"), "{orphans:?}");

    let users = ws.peer.users().await;
    for id in ["E1007", "E1009", "E1010"] {
        assert_eq!(accounts_of(&users, id), 1, "exactly one account for {id}");
    }
    let zoe = ws
        .peer
        .get(by_external_id["id"].as_str().expect("id"))
        .await
        .expect("adopted");
    assert_eq!(
        zoe["userName"], "zoe.odegard@northwind.example",
        "the adopted account is updated"
    );
    assert_eq!(zoe[EXT_URN]["coreTeam"], "Sales");
    assert!(
        ws.peer
            .get(ghost["id"].as_str().expect("id"))
            .await
            .is_some(),
        "orphans are only reported"
    );

    let again = ws.sync(&[], 0);
    assert_eq!(again["summary"]["create"], 0);
    assert_eq!(again["summary"]["adopted"], 0);
    assert_eq!(again["summary"]["update"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_in_managed_attributes_is_repaired_and_unmanaged_ones_are_left_alone() {
    let mut ws = Workspace::new();
    read_back(&mut ws, "");
    ws.sync(&[], 0);
    let zoe = ws
        .peer
        .user_by_name("zoe.odegard@northwind.example")
        .await
        .expect("exists");
    let id = zoe["id"].as_str().expect("id").to_owned();
    let mut changed = zoe.clone();
    changed[EXT_URN]["coreTeam"] = json!("Marketing");
    changed[EXT_URN]["udf_location"] = json!("Paris");
    ws.peer.put(&id, changed).await;

    let report = ws.sync(&[], 0);
    assert_eq!(report["summary"]["drift_repaired"], 1, "{report:#}");
    let drift = &report["drift"][0];
    assert_eq!(
        (
            drift["attribute"].as_str(),
            drift["ours"].as_str(),
            drift["theirs"].as_str()
        ),
        (Some("coreTeam"), Some("Sales"), Some("Marketing"))
    );
    let repaired = ws.peer.get(&id).await.expect("exists");
    assert_eq!(repaired[EXT_URN]["coreTeam"], "Sales");
    assert_eq!(
        repaired[EXT_URN]["udf_location"], "Paris",
        "an attribute we do not map is kept"
    );

    // Report only: the drift is listed, and SocialTalent keeps its value.
    let mut changed = repaired.clone();
    changed["title"] = json!("Chief Recruiter");
    ws.peer.put(&id, changed).await;
    read_back(&mut ws, "drift = \"report\"");
    let report = ws.sync(&[], 0);
    assert_eq!(report["summary"]["update"], 0, "{report:#}");
    assert_eq!(report["drift"][0]["attribute"], "title");
    assert_eq!(report["drift"][0]["repaired"], false);
    assert_eq!(
        ws.peer.get(&id).await.expect("exists")["title"],
        "Chief Recruiter"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_are_deactivated_within_the_safety_limits_when_asked() {
    let mut ws = Workspace::new();
    read_back(&mut ws, "orphans = \"deactivate\"");
    ws.sections = "[safety]\nmax_deactivations = 2\nmax_deactivation_percent = 0.0".into();
    for name in [
        "old1@northwind.example",
        "old2@northwind.example",
        "old3@northwind.example",
    ] {
        ws.peer.create(seed(name, None, None)).await;
    }
    let held = ws.sync(&[], 3);
    assert_eq!(held["summary"]["held"], 3, "{held:#}");
    assert_eq!(
        held["summary"]["create"], 21,
        "creates go on while deactivations are held"
    );
    assert!(
        ws.peer
            .user_by_name("old1@northwind.example")
            .await
            .is_some()
    );

    let released = ws.sync(&["--allow-deactivations"], 0);
    assert_eq!(released["summary"]["deactivate"], 3);
    assert!(
        ws.peer
            .user_by_name("old1@northwind.example")
            .await
            .is_none()
    );
    assert_eq!(ws.sync(&[], 0)["summary"]["orphans"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socialtalent_ids_are_written_back_into_okta() {
    let okta = FakeOkta::start().await;
    okta.add_user(
        "00u1",
        "ACTIVE",
        json!({"login": "ana@northwind.example", "email": "ana@northwind.example", "firstName": "Ana",
               "lastName": "Li", "department": "Sales"}),
    );
    okta.add_group("00g1", "SocialTalent");
    okta.add_member("00g1", "00u1");
    let mut ws = Workspace::new();
    ws.source = format!(
        "[source]\nkind = \"okta\"\n[source.okta]\norg_url = \"{}\"\ntoken = \"{}\"\n\n[writeback]\nattribute = \"socialTalentId\"\n",
        okta.url,
        okta.api_token()
    );
    // The attribute does not exist in the Okta profile yet: the write-back fails with advice.
    let failed = ws.sync(&[], 1);
    assert_eq!(failed["summary"]["create"], 1);
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
            .is_some_and(|e| e.contains("Profile Editor")),
        "{writeback}"
    );

    okta.define_attribute("socialTalentId");
    okta.advance_clock(600);
    let dry = ws.sync(&["--dry-run"], 0);
    assert_eq!(
        dry["summary"]["writebacks"], 1,
        "dry runs list write-backs: {dry:#}"
    );
    let done = ws.sync(&[], 0);
    assert_eq!(done["summary"]["writebacks"], 1);
    let scim_id = ws
        .peer
        .user_by_name("ana@northwind.example")
        .await
        .expect("created")["id"]
        .clone();
    assert_eq!(
        okta.user("00u1").expect("user")["profile"]["socialTalentId"],
        scim_id
    );

    okta.advance_clock(600);
    assert_eq!(
        ws.sync(&["--full"], 0)["summary"]["writebacks"],
        0,
        "only when it differs"
    );
}
