//! End to end: the real binary, the bundled example directory, and the real SCIM server
//! (scim2-server). What the dry run says is what the real run does; a second run plans nothing;
//! hires, changes, leavers and rehires reach SocialTalent; safety holds deactivations.

use serde_json::{Value, json};

use crate::support::peer::EXT_URN;
use crate::support::{EXAMPLE_MAPPING, Workspace, ops, person};

fn user_names(users: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = users
        .iter()
        .map(|user| user["userName"].as_str().expect("userName").to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_sync_creates_what_the_dry_run_said_and_a_second_sync_plans_nothing() {
    let ws = Workspace::new();
    let dry = ws.sync(&["--dry-run"], 0);
    assert_eq!(dry["mode"], "dry-run");
    assert_eq!(dry["summary"]["create"], 21);
    assert!(
        !ws.state_path().exists(),
        "a dry run must not create the state"
    );
    assert!(ws.peer.users().await.is_empty(), "a dry run must not write");

    let applied = ws.sync(&[], 0);
    assert_eq!(applied["mode"], "applied");
    assert_eq!(
        ops(&applied),
        ops(&dry),
        "the real run does what the dry run said"
    );
    for action in applied["actions"].as_array().expect("actions") {
        if action["op"] == "create" {
            assert_eq!(action["result"], "ok", "{action}");
        }
    }

    let users = ws.peer.users().await;
    assert_eq!(users.len(), 21);
    let zoe = ws
        .peer
        .user_by_name("zoe.odegard@northwind.example")
        .await
        .expect("Zoë exists");
    assert_eq!(zoe["externalId"], "E1007");
    assert_eq!(zoe["active"], true);
    assert_eq!(zoe["name"]["givenName"], "Zoë");
    assert_eq!(zoe[EXT_URN]["coreTeam"], "Sales");
    assert_eq!(zoe[EXT_URN]["role"], "advisor");
    assert_eq!(zoe[EXT_URN]["reportsTo"], "ana.li@northwind.example");
    assert_eq!(zoe[EXT_URN]["udf_Customer_ID"], "C-1042");
    assert_eq!(zoe[EXT_URN]["teamsToManage"], json!(["Sales EMEA"]));
    let admin = ws
        .peer
        .user_by_name("priya.raman@northwind.example")
        .await
        .expect("admin");
    assert_eq!(admin[EXT_URN]["role"], "company_admin");
    assert!(
        ws.peer
            .user_by_name("noor.rahman@northwind.example")
            .await
            .is_none(),
        "the record without a department is skipped"
    );

    let again = ws.sync(&[], 0);
    let summary = &again["summary"];
    assert_eq!(summary["create"], 0);
    assert_eq!(summary["update"], 0);
    assert_eq!(summary["deactivate"], 0);
    assert_eq!(summary["unchanged"], 21);
    assert_eq!(ops(&again), vec![("skip".to_owned(), "E1024".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_leavers_hires_and_rehires_follow_the_source() {
    let ws = Workspace::new();
    ws.sync(&[], 0);
    let mut directory = crate::support::example_directory();
    person(&mut directory, "E1009").insert("department".into(), json!("Marketing"));
    person(&mut directory, "E1009").insert(
        "groups".into(),
        json!(["SocialTalent", "LP Sourcing", "LP Onboarding"]),
    );
    person(&mut directory, "E1010").insert("active".into(), json!(false));
    directory
        .as_array_mut()
        .expect("array")
        .retain(|record| record["id"] != "E1020");
    // A new manager and a report of hers, both hired today.
    directory.as_array_mut().expect("array").extend([
        json!({"id": "E2001", "email": "new.report@northwind.example", "given_name": "New", "family_name": "Report",
               "active": true, "department": "Sales", "manager_id": "E2000", "groups": ["SocialTalent"]}),
        json!({"id": "E2000", "email": "new.lead@northwind.example", "given_name": "New", "family_name": "Lead",
               "active": true, "department": "Sales", "groups": ["SocialTalent"], "isManager": true}),
    ]);
    ws.write_directory(&directory);

    let dry = ws.sync(&["--dry-run"], 0);
    let applied = ws.sync(&[], 0);
    assert_eq!(ops(&applied), ops(&dry));
    assert_eq!(
        ops(&applied)
            .into_iter()
            .filter(|(op, _)| op != "skip")
            .collect::<Vec<_>>(),
        vec![
            ("create".to_owned(), "E2000".to_owned()),
            ("create".to_owned(), "E2001".to_owned()),
            ("deactivate".to_owned(), "E1010".to_owned()),
            ("deactivate".to_owned(), "E1020".to_owned()),
            ("update".to_owned(), "E1009".to_owned()),
        ]
    );
    let update = applied["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|action| action["op"] == "update")
        .expect("update");
    let changed: Vec<&str> = update["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|change| change["attribute"].as_str().expect("attribute"))
        .collect();
    assert_eq!(changed, vec!["coreTeam", "learningPaths"]);
    let creates: Vec<&Value> = applied["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|action| action["op"] == "create")
        .collect();
    assert_eq!(creates[0]["idp_id"], "E2000", "the manager comes first");

    let oliver = ws
        .peer
        .user_by_name("oliver.bennett@northwind.example")
        .await
        .expect("exists");
    assert_eq!(oliver[EXT_URN]["coreTeam"], "Marketing");
    assert_eq!(
        oliver[EXT_URN]["learningPaths"],
        json!(["Onboarding", "Sourcing"])
    );
    assert!(
        ws.peer
            .user_by_name("freya.lindqvist@northwind.example")
            .await
            .is_none(),
        "deactivated (DELETE)"
    );
    assert!(
        ws.peer
            .user_by_name("marcus.adeyemi@northwind.example")
            .await
            .is_none(),
        "gone from the source"
    );
    let report = ws
        .peer
        .user_by_name("new.report@northwind.example")
        .await
        .expect("new hire");
    assert_eq!(report[EXT_URN]["reportsTo"], "new.lead@northwind.example");

    // Freya comes back: the same account is reactivated (scim2-server deleted it, so it is
    // created again, as SPEC §5 says for an account that vanished).
    person(&mut directory, "E1010").insert("active".into(), json!(true));
    ws.write_directory(&directory);
    let rehire = ws.sync(&[], 0);
    assert_eq!(
        ops(&rehire)
            .into_iter()
            .filter(|(op, _)| op != "skip")
            .collect::<Vec<_>>(),
        vec![("reactivate".to_owned(), "E1010".to_owned())]
    );
    assert!(
        ws.peer
            .user_by_name("freya.lindqvist@northwind.example")
            .await
            .is_some()
    );
    let settled = ws.sync(&[], 0);
    assert_eq!(settled["summary"]["reactivate"], 0);
    assert_eq!(settled["summary"]["create"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_mode_updates_deactivates_and_reactivates_with_patch() {
    let mut ws = Workspace::new();
    ws.target_extra = "update_with = \"patch\"\ndeactivate_with = \"patch\"".into();
    ws.sync(&[], 0);
    let mut directory = crate::support::example_directory();
    person(&mut directory, "E1009").insert("title".into(), json!("Senior Recruiter"));
    person(&mut directory, "E1011").remove("title");
    person(&mut directory, "E1012").insert("active".into(), json!(false));
    ws.write_directory(&directory);
    ws.sync(&[], 0);
    let oliver = ws
        .peer
        .user_by_name("oliver.bennett@northwind.example")
        .await
        .expect("exists");
    assert_eq!(oliver["title"], "Senior Recruiter");
    let chloe = ws
        .peer
        .user_by_name("chloe.dubois@northwind.example")
        .await
        .expect("exists");
    assert!(
        chloe.get("title").is_none(),
        "a cleared attribute is removed: {chloe}"
    );
    let mateo = ws
        .peer
        .user_by_name("mateo.garcia@northwind.example")
        .await
        .expect("kept");
    assert_eq!(
        mateo["active"], false,
        "deactivated with PATCH active:false"
    );

    person(&mut directory, "E1012").insert("active".into(), json!(true));
    ws.write_directory(&directory);
    let report = ws.sync(&[], 0);
    assert_eq!(report["summary"]["reactivate"], 1);
    let mateo = ws
        .peer
        .user_by_name("mateo.garcia@northwind.example")
        .await
        .expect("kept");
    assert_eq!(mateo["active"], true);
    assert_eq!(
        mateo["id"],
        report["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .find(|a| a["op"] == "reactivate")
            .expect("reactivate")["scim_id"]
    );
    ws.sync(&[], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_account_is_adopted_on_409_never_duplicated() {
    let ws = Workspace::new();
    let existing = ws
        .peer
        .create(json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "Zoe.Odegard@Northwind.example",
            "active": true
        }))
        .await;
    let report = ws.sync(&[], 0);
    let zoe = report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|action| action["idp_id"] == "E1007")
        .expect("Zoë's action")
        .clone();
    assert_eq!(zoe["result"], "ok", "{zoe}");
    assert_eq!(zoe["scim_id"], existing["id"]);
    assert!(
        zoe["note"].as_str().is_some_and(|n| n.contains("adopted")),
        "{zoe}"
    );
    let users = ws.peer.users().await;
    assert_eq!(users.len(), 21, "no duplicate: {:?}", user_names(&users));
    let adopted = ws
        .peer
        .get(existing["id"].as_str().expect("id"))
        .await
        .expect("exists");
    assert_eq!(adopted["externalId"], "E1007");
    assert_eq!(adopted[EXT_URN]["coreTeam"], "Sales");
    ws.sync(&[], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_deleted_behind_our_back_is_created_again_on_update() {
    let ws = Workspace::new();
    ws.sync(&[], 0);
    let oliver = ws
        .peer
        .user_by_name("oliver.bennett@northwind.example")
        .await
        .expect("exists");
    ws.peer.delete(oliver["id"].as_str().expect("id")).await;
    let mut directory = crate::support::example_directory();
    person(&mut directory, "E1009").insert("title".into(), json!("Team Lead"));
    ws.write_directory(&directory);
    let report = ws.sync(&[], 0);
    let action = report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|action| action["idp_id"] == "E1009")
        .expect("update")
        .clone();
    assert_eq!(action["op"], "update");
    assert_eq!(action["result"], "ok");
    let again = ws
        .peer
        .user_by_name("oliver.bennett@northwind.example")
        .await
        .expect("recreated");
    assert_eq!(again["title"], "Team Lead");
    assert_ne!(again["id"], oliver["id"]);
    let settled = ws.sync(&[], 0);
    assert_eq!(settled["summary"]["update"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_leavers_are_held_until_released() {
    let mut ws = Workspace::new();
    ws.sections = "[safety]\nmax_deactivations = 2\nmax_deactivation_percent = 0.0".into();
    ws.sync(&[], 0);
    let mut directory = crate::support::example_directory();
    directory
        .as_array_mut()
        .expect("array")
        .retain(|record| !matches!(record["id"].as_str(), Some("E1016" | "E1017" | "E1018")));
    ws.write_directory(&directory);
    let held = ws.sync(&[], 3);
    assert_eq!(held["summary"]["held"], 3);
    assert_eq!(held["summary"]["deactivate"], 0);
    assert_eq!(ws.peer.users().await.len(), 21, "nothing deactivated");

    let status = ws.run(&["status"]);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(
        status
            .stdout
            .contains("Held deactivations (pending until released"),
        "{}",
        status.stdout
    );
    assert!(
        status
            .stdout
            .contains("emily.carter@northwind.example (E1016)"),
        "{}",
        status.stdout
    );

    let released = ws.sync(&["--allow-deactivations"], 0);
    assert_eq!(released["summary"]["deactivate"], 3);
    assert_eq!(ws.peer.users().await.len(), 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refused_user_fails_alone_and_is_reported_by_status() {
    let mut ws = Workspace::new();
    // Only Zoë has a value for this field, and the target does not declare it: her create is
    // refused (400), everyone else goes through.
    ws.mapping
        .push_str("undeclared = \"{{ user.attrs.bogus }}\"\n");
    let mut directory = crate::support::example_directory();
    person(&mut directory, "E1007").insert("bogus".into(), json!("x"));
    ws.write_directory(&directory);
    let report = ws.sync(&[], 1);
    assert_eq!(report["summary"]["failed"], 1);
    let failed: Vec<&Value> = report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|action| action["result"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["idp_id"], "E1007");
    let error = failed[0]["error"].as_str().expect("error");
    assert!(
        error.contains("(400)") && error.contains("undeclared"),
        "{error}"
    );
    assert_eq!(ws.peer.users().await.len(), 20);

    let status = ws.run(&["status", "--output", "json"]);
    assert_eq!(
        status.json["failing_users"][0]["idp_id"], "E1007",
        "{}",
        status.stdout
    );
    assert_eq!(status.json["failing_users"][0]["consecutive_failures"], 1);
    assert_eq!(status.json["last_runs"][0]["outcome"], "failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_fails_the_run_with_a_clear_message() {
    let ws = Workspace::new();
    let mut config = ws.config_text();
    config = config.replace(
        &format!("${{{}}}", crate::support::TOKEN_VAR),
        "wrong-token-value",
    );
    std::fs::write(ws.config_path(), &config).expect("write");
    let output = assert_cmd::Command::cargo_bin("socialtalent-sync")
        .expect("binary")
        .current_dir(ws.dir.path())
        .args(["--config"])
        .arg(ws.config_path())
        .args(["sync", "--output", "json"])
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    let errors: Vec<&str> = report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|action| action["op"] == "create")
        .map(|action| {
            assert_eq!(action["result"], "failed", "{action}");
            action["error"].as_str().expect("error")
        })
        .collect();
    assert!(
        errors
            .iter()
            .any(|e| e.contains("(401)") && e.contains("target.token")),
        "{errors:?}"
    );
    assert!(
        errors.iter().filter(|e| e.starts_with("not sent")).count() >= errors.len() - 4,
        "the run stops after the first refusal (at most one request per in-flight slot): {errors:?}"
    );
    assert!(
        report["stopped"]
            .as_str()
            .is_some_and(|reason| reason.contains("target.token")),
        "the report says why the run stopped: {}",
        report["stopped"]
    );
    // Bad credentials are nobody's fault in particular: no user moves towards quarantine.
    let status = ws.run(&["status", "--output", "json"]);
    assert_eq!(status.json["failing_users"], json!([]), "{}", status.stdout);
    let everything = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !everything.contains("wrong-token-value"),
        "the token leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_connect_reports_attributes_the_target_does_not_declare() {
    let mut ws = Workspace::new();
    let ok = ws.run(&["check-config", "--connect"]);
    assert_eq!(ok.code, 0, "{}\n{}", ok.stdout, ok.stderr);
    assert!(
        ok.stdout.contains("every mapped attribute is declared"),
        "{}",
        ok.stdout
    );

    ws.mapping
        .push_str("costCentre = \"{{ user.attrs.costCenter }}\"\n");
    let bad = ws.run(&["check-config", "--connect"]);
    assert_eq!(bad.code, 2, "{}\n{}", bad.stdout, bad.stderr);
    assert!(
        bad.stdout
            .contains("costCentre is not declared by the target's schemas"),
        "{}",
        bad.stdout
    );
    assert!(
        ws.peer.users().await.is_empty(),
        "check-config writes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_apply_provisions_one_person_only() {
    let ws = Workspace::new();
    let preview = ws.run(&[
        "preview",
        "ZOE.ODEGARD@northwind.example",
        "--output",
        "json",
    ]);
    assert_eq!(preview.code, 0, "{}", preview.stderr);
    assert_eq!(preview.json["scope"], "in scope");
    assert_eq!(preview.json["action"]["op"], "create");
    assert_eq!(preview.json["payload"][EXT_URN]["coreTeam"], "Sales");
    assert!(
        ws.peer.users().await.is_empty(),
        "preview alone writes nothing"
    );

    let applied = ws.run(&["preview", "E1007", "--apply"]);
    assert_eq!(applied.code, 0, "{}\n{}", applied.stdout, applied.stderr);
    let users = ws.peer.users().await;
    assert_eq!(user_names(&users), vec!["zoe.odegard@northwind.example"]);
    // The state knows her now: the full sync creates the other 20 and leaves her unchanged.
    let report = ws.sync(&[], 0);
    assert_eq!(report["summary"]["create"], 20);
    assert_eq!(report["summary"]["unchanged"], 1);
}

/// A run skips users whose source record and mapping are as at their last push; a change to
/// the mapping alone must still reach every account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_change_alone_updates_every_user_it_touches() {
    let mut ws = Workspace::new();
    ws.sync(&[], 0);
    assert_eq!(ws.sync(&[], 0)["summary"]["unchanged"], 21);

    ws.mapping = ws.mapping.replace(
        "{{ user.attrs.customerId }}",
        "CID-{{ user.attrs.customerId }}",
    );
    assert_ne!(ws.mapping, EXAMPLE_MAPPING, "the test changes the mapping");
    let changed = ws.sync(&[], 0);
    let updated = changed["summary"]["update"].as_u64().expect("count");
    assert!(updated > 0, "{changed}");
    let zoe = ws
        .peer
        .user_by_name("zoe.odegard@northwind.example")
        .await
        .expect("Zoë exists");
    assert_eq!(zoe[EXT_URN]["udf_Customer_ID"], "CID-C-1042");

    let again = ws.sync(&[], 0);
    assert_eq!(again["summary"]["update"], 0, "{again}");
    assert_eq!(again["summary"]["unchanged"], 21);
}
