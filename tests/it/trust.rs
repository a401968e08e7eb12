//! Writes never hurt the wrong person (SPEC §2 updates, §5 "Writes never hurt the wrong
//! person"): against the real SCIM peer, with accounts that already hold values the mapping does
//! not manage (a `home` email that is the primary one, a `mobile` phone, an address, another
//! `udf_` field, the enterprise extension), every write path keeps them; mandatory values are
//! never cleared; orphans are only accounts no IdP user matches; a `409` never merges two people;
//! `drift = "report"` lets SocialTalent's values stand; a removed mapping line stops being
//! managed; protected accounts are never touched; and a value the target does not keep is
//! reported and not sent again.

use serde_json::{Value, json};

use crate::support::fake_scim::FakeScim;
use crate::support::peer::{EXT_URN, USER_URN};
use crate::support::{Workspace, example_directory, ops, person};

/// The enterprise extension scim2-server declares by default (another schema's extension).
const ENTERPRISE_URN: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

const ZOE: &str = "zoe.odegard@northwind.example";
const OLIVER: &str = "oliver.bennett@northwind.example";

/// The two ways of sending an update, and whether the run reads SocialTalent back.
const WAYS: [(&str, bool); 4] = [
    ("put", false),
    ("put", true),
    ("patch", false),
    ("patch", true),
];

fn configure(ws: &mut Workspace, update_with: &str, read_back: bool, reconcile_extra: &str) {
    ws.target_extra = format!("update_with = \"{update_with}\"");
    ws.reconcile = format!("read_back = {read_back}\n{reconcile_extra}");
}

/// Adds to the account what somebody else put there: a `home` email made the primary one (the
/// work email kept, not primary), a `mobile` phone, an address, another `udf_` field and the
/// enterprise extension. Returns the account as the peer then holds it.
async fn seed_unmanaged(ws: &Workspace, id: &str) -> Value {
    let mut account = ws.peer.get(id).await.expect("the account exists");
    let work_email = account["emails"]
        .as_array()
        .and_then(|emails| emails.iter().find(|email| email["type"] == "work"))
        .map(|email| email["value"].clone())
        .unwrap_or_else(|| json!(ZOE));
    account["emails"] = json!([
        {"value": "zoe@home.example", "type": "home", "primary": true},
        {"value": work_email, "type": "work"}
    ]);
    account["phoneNumbers"] = json!([{"value": "+353 87 000 0000", "type": "mobile"}]);
    account["addresses"] = json!([{"locality": "Cork", "type": "home"}]);
    account[EXT_URN]["udf_location"] = json!("Cork office");
    account[ENTERPRISE_URN] = json!({"costCenter": "CC-777"});
    let schemas = account["schemas"].as_array_mut().expect("schemas");
    if !schemas.iter().any(|schema| schema == ENTERPRISE_URN) {
        schemas.push(json!(ENTERPRISE_URN));
    }
    if let Some(object) = account.as_object_mut() {
        object.remove("meta");
    }
    ws.peer.put(id, account).await
}

/// Asserts that what [`seed_unmanaged`] put there is still there, unchanged, and that the
/// managed work email holds `work_email`.
fn assert_unmanaged_intact(account: &Value, work_email: &str, context: &str) {
    assert_eq!(
        account["emails"],
        json!([
            {"value": "zoe@home.example", "type": "home", "primary": true},
            {"value": work_email, "type": "work"}
        ]),
        "{context}: the home email keeps its value, type, primary flag and place: {account:#}"
    );
    assert_eq!(
        account["phoneNumbers"],
        json!([{"value": "+353 87 000 0000", "type": "mobile"}]),
        "{context}: {account:#}"
    );
    assert_eq!(
        account["addresses"],
        json!([{"locality": "Cork", "type": "home"}]),
        "{context}: {account:#}"
    );
    assert_eq!(
        account[EXT_URN]["udf_location"], "Cork office",
        "{context}: {account:#}"
    );
    assert_eq!(
        account[ENTERPRISE_URN]["costCenter"], "CC-777",
        "{context}: {account:#}"
    );
}

fn action<'a>(report: &'a Value, idp_id: &str) -> &'a Value {
    report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .find(|action| action["idp_id"] == idp_id)
        .unwrap_or_else(|| panic!("no action for {idp_id}: {report:#}"))
}

fn id_of(account: &Value) -> String {
    account["id"].as_str().expect("id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_keeps_every_value_the_mapping_does_not_manage() {
    for (update_with, read_back) in WAYS {
        let context = format!("update_with = {update_with}, read_back = {read_back}");
        let mut ws = Workspace::new();
        configure(&mut ws, update_with, read_back, "");
        ws.sync(&[], 0);
        let zoe = ws.peer.user_by_name(ZOE).await.expect("created");
        seed_unmanaged(&ws, &id_of(&zoe)).await;

        // A change of title and of (work) email in the IdP.
        let mut directory = example_directory();
        let record = person(&mut directory, "E1007");
        record.insert("title".into(), json!("Senior Recruiter"));
        record.insert("email".into(), json!("zoe.o@northwind.example"));
        ws.write_directory(&directory);
        let report = ws.sync(&[], 0);
        // Her reports' `reportsTo` follows her email too.
        let update = action(&report, "E1007");
        assert_eq!(
            (&update["op"], &update["result"]),
            (&json!("update"), &json!("ok")),
            "{context}: {report:#}"
        );

        let after = ws.peer.get(&id_of(&zoe)).await.expect("still there");
        assert_eq!(after["title"], "Senior Recruiter", "{context}");
        assert_eq!(after["userName"], "zoe.o@northwind.example", "{context}");
        assert_unmanaged_intact(&after, "zoe.o@northwind.example", &context);
        assert_eq!(after["active"], true, "{context}");
        assert_eq!(
            ws.sync(&[], 0)["summary"]["update"],
            0,
            "{context}: a sync right after a sync plans nothing"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_adoption_keeps_unmanaged_values_and_sets_the_managed_ones() {
    for update_with in ["put", "patch"] {
        let mut ws = Workspace::new();
        // No read-back: the plan creates, SocialTalent answers 409, the account is adopted.
        configure(&mut ws, update_with, false, "");
        let seeded = ws
            .peer
            .create(json!({
                "schemas": [USER_URN, EXT_URN],
                "userName": ZOE.to_uppercase(),
                "emails": [{"value": ZOE, "type": "work", "primary": true}],
                EXT_URN: {"coreTeam": "Legacy", "role": "user"}
            }))
            .await;
        seed_unmanaged(&ws, &id_of(&seeded)).await;

        let report = ws.sync(&[], 0);
        let zoe = action(&report, "E1007");
        assert_eq!(zoe["result"], "ok", "{update_with}: {zoe:#}");
        assert_eq!(
            zoe["scim_id"], seeded["id"],
            "{update_with}: adopted, not duplicated"
        );
        let after = ws.peer.get(&id_of(&seeded)).await.expect("still there");
        assert_eq!(after[EXT_URN]["coreTeam"], "Sales", "{update_with}");
        assert_eq!(after["externalId"], "E1007", "{update_with}");
        assert_eq!(after["title"], "Recruiter", "{update_with}");
        assert_unmanaged_intact(&after, ZOE, update_with);
        let zoes = ws
            .peer
            .users()
            .await
            .into_iter()
            .filter(|user| {
                user["userName"]
                    .as_str()
                    .is_some_and(|n| n.eq_ignore_ascii_case(ZOE))
            })
            .count();
        assert_eq!(zoes, 1, "{update_with}: never a duplicate");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_never_takes_an_account_whose_external_id_is_another_idp_users() {
    let mut ws = Workspace::new();
    configure(&mut ws, "put", false, "");
    // Zoë's userName, but the account is Oliver's (E1009) by externalId.
    let seeded = ws
        .peer
        .create(json!({
            "schemas": [USER_URN, EXT_URN],
            "userName": ZOE,
            "externalId": "E1009",
            EXT_URN: {"coreTeam": "Legacy", "role": "user"}
        }))
        .await;

    let report = ws.sync(&[], 1);
    let zoe = action(&report, "E1007");
    assert_eq!(zoe["result"], "failed", "{zoe:#}");
    assert!(
        zoe["error"]
            .as_str()
            .is_some_and(|error| error.contains("E1009") && error.contains("not adopted")),
        "{zoe:#}"
    );
    let after = ws.peer.get(&id_of(&seeded)).await.expect("untouched");
    assert_eq!(after["externalId"], "E1009", "nothing is merged");
    assert_eq!(after[EXT_URN]["coreTeam"], "Legacy");
    let oliver = ws.peer.user_by_name(OLIVER).await.expect("created");
    assert_eq!(oliver["externalId"], "E1009", "Oliver has his own account");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mandatory_value_that_renders_empty_never_clears_an_account() {
    for (update_with, read_back) in WAYS {
        let context = format!("update_with = {update_with}, read_back = {read_back}");
        let mut ws = Workspace::new();
        configure(&mut ws, update_with, read_back, "");
        // Noor (E1024) has no department: skipped on create. Her account exists already with
        // a core team set by hand: an adoption must not clear it.
        let noor = ws
            .peer
            .create(json!({
                "schemas": [USER_URN, EXT_URN],
                "userName": "noor.rahman@northwind.example",
                EXT_URN: {"coreTeam": "Contractors", "role": "user"}
            }))
            .await;
        ws.sync(&[], 0);
        let zoe = ws.peer.user_by_name(ZOE).await.expect("created");

        // Zoë's department becomes empty, and her title changes.
        let mut directory = example_directory();
        let record = person(&mut directory, "E1007");
        record.insert("department".into(), json!(""));
        record.insert("title".into(), json!("Senior Recruiter"));
        ws.write_directory(&directory);
        let report = ws.sync(&[], 0);
        for idp_id in ["E1007", "E1024"] {
            let skipped = action(&report, idp_id);
            assert_eq!(skipped["op"], "skip", "{context}: {skipped:#}");
            assert_eq!(
                skipped["error"], "coreTeam is empty; it is mandatory on create",
                "{context}: the same message on every path"
            );
        }
        let zoe = ws.peer.get(&id_of(&zoe)).await.expect("still there");
        assert_eq!(
            zoe[EXT_URN]["coreTeam"], "Sales",
            "{context}: never cleared"
        );
        assert_eq!(
            zoe["title"], "Recruiter",
            "{context}: the account stays as it is"
        );
        let noor = ws.peer.get(&id_of(&noor)).await.expect("still there");
        assert_eq!(noor[EXT_URN]["coreTeam"], "Contractors", "{context}");
        assert!(noor.get("externalId").is_none(), "{context}: not adopted");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphan_deactivation_spares_every_account_an_idp_user_matches() {
    let mut ws = Workspace::new();
    configure(&mut ws, "put", true, "orphans = \"deactivate\"");
    ws.sections = "[safety]\nmax_deactivations = 10".into();
    let mut seeded = Vec::new();
    for (user_name, email) in [
        // Noor is skipped (no department): her account matches her by userName.
        ("noor.rahman@northwind.example", None),
        // Raj is out of scope (not in the SocialTalent group), but the source returns him.
        ("raj.patel@northwind.example", None),
        // Two accounts carry Chloé's email: ambiguous, so neither is adopted nor an orphan.
        (
            "chloe.1@legacy.example",
            Some("chloe.dubois@northwind.example"),
        ),
        (
            "chloe.2@legacy.example",
            Some("chloe.dubois@northwind.example"),
        ),
    ] {
        let mut body = json!({"schemas": [USER_URN], "userName": user_name, "active": true});
        if let Some(email) = email {
            body["emails"] = json!([{"value": email, "type": "work", "primary": true}]);
        }
        seeded.push(ws.peer.create(body).await);
    }
    let ghost = ws
        .peer
        .create(json!({"schemas": [USER_URN], "userName": "ghost@northwind.example"}))
        .await;

    let report = ws.sync(&[], 0);
    assert_eq!(report["summary"]["deactivate"], 1, "{report:#}");
    let deactivated: Vec<&Value> = report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter(|action| action["op"] == "deactivate")
        .collect();
    assert_eq!(
        deactivated[0]["scim_id"], ghost["id"],
        "only the true orphan"
    );
    assert!(ws.peer.get(&id_of(&ghost)).await.is_none());
    for account in &seeded {
        let still = ws.peer.get(&id_of(account)).await;
        assert!(
            still.is_some(),
            "{} was deactivated: {report:#}",
            account["userName"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_report_lets_socialtalents_values_stand() {
    for read_back in [true, false] {
        let mut ws = Workspace::new();
        configure(&mut ws, "put", read_back, "drift = \"report\"");
        ws.sync(&[], 0);
        let zoe = ws.peer.user_by_name(ZOE).await.expect("created");
        let oliver = ws.peer.user_by_name(OLIVER).await.expect("created");
        // By hand in SocialTalent: Zoë's core team changes, Oliver is deactivated.
        let mut changed = zoe.clone();
        changed[EXT_URN]["coreTeam"] = json!("Marketing");
        ws.peer.put(&id_of(&zoe), changed).await;
        ws.peer
            .patch(
                &id_of(&oliver),
                json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                       "Operations": [{"op": "replace", "path": "active", "value": false}]}),
            )
            .await;
        // In the IdP, both get a new title.
        let mut directory = example_directory();
        person(&mut directory, "E1007").insert("title".into(), json!("Senior Recruiter"));
        person(&mut directory, "E1009").insert("title".into(), json!("Senior AE"));
        ws.write_directory(&directory);
        ws.sync(&[], 0);

        let zoe = ws.peer.get(&id_of(&zoe)).await.expect("exists");
        assert_eq!(zoe["title"], "Senior Recruiter", "read_back = {read_back}");
        assert_eq!(
            zoe[EXT_URN]["coreTeam"], "Marketing",
            "read_back = {read_back}: SocialTalent's value stands"
        );
        let oliver = ws.peer.get(&id_of(&oliver)).await.expect("exists");
        assert_eq!(oliver["title"], "Senior AE", "read_back = {read_back}");
        assert_eq!(
            oliver["active"], false,
            "read_back = {read_back}: an update never reactivates an account deactivated by hand"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_line_removed_is_no_longer_managed() {
    for (update_with, read_back) in WAYS {
        let context = format!("update_with = {update_with}, read_back = {read_back}");
        let mut ws = Workspace::new();
        configure(&mut ws, update_with, read_back, "");
        ws.sync(&[], 0);
        let zoe = ws.peer.user_by_name(ZOE).await.expect("created");
        // The administrator removes `title` from the mapping; Zoë's title is set by hand.
        ws.mapping = ws.mapping.replace("title = \"{{ user.title }}\"\n", "");
        let mut changed = zoe.clone();
        changed["title"] = json!("Hand-set title");
        ws.peer.put(&id_of(&zoe), changed).await;
        // One other person changes in the IdP.
        let mut directory = example_directory();
        person(&mut directory, "E1009").insert("department".into(), json!("Marketing"));
        ws.write_directory(&directory);

        let report = ws.sync(&[], 0);
        assert_eq!(
            ops(&report)
                .iter()
                .filter(|(op, _)| op != "skip")
                .collect::<Vec<_>>(),
            vec![&("update".to_owned(), "E1009".to_owned())],
            "{context}: exactly one write: {report:#}"
        );
        assert!(
            report["warnings"]
                .as_array()
                .is_some_and(|warnings| warnings.iter().any(|w| w
                    .as_str()
                    .is_some_and(|w| w.starts_with("title: no longer in [mapping]")))),
            "{context}: the plan says which attribute stopped being managed: {report:#}"
        );
        let zoe = ws.peer.get(&id_of(&zoe)).await.expect("exists");
        assert_eq!(zoe["title"], "Hand-set title", "{context}");
        let oliver = ws.peer.user_by_name(OLIVER).await.expect("exists");
        assert_eq!(oliver[EXT_URN]["coreTeam"], "Marketing", "{context}");
        assert_eq!(
            oliver["title"], "Account Executive",
            "{context}: left as it was"
        );

        let again = ws.sync(&["--full"], 0);
        assert_eq!(again["summary"]["update"], 0, "{context}: {again:#}");
        assert!(
            again.get("warnings").is_none(),
            "{context}: noted once: {again:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_accounts_are_never_touched() {
    let mut ws = Workspace::new();
    configure(&mut ws, "put", true, "orphans = \"deactivate\"");
    ws.sections =
        "[safety]\nmax_deactivations = 10\nprotect = [\"support@socialtalent.*\", \"ZOE.*\"]"
            .into();
    let support = ws
        .peer
        .create(json!({"schemas": [USER_URN], "userName": "support@socialtalent.com"}))
        .await;
    let zoe = ws
        .peer
        .create(json!({
            "schemas": [USER_URN, EXT_URN],
            "userName": ZOE,
            EXT_URN: {"coreTeam": "Legacy", "role": "company_admin"}
        }))
        .await;

    let report = ws.sync(&[], 0);
    assert_eq!(report["summary"]["protected"], 2, "{report:#}");
    assert_eq!(action(&report, "E1007")["op"], "protected");
    assert_eq!(report["summary"]["deactivate"], 0);
    assert!(
        ws.peer.get(&id_of(&support)).await.is_some(),
        "never deactivated"
    );
    let after = ws.peer.get(&id_of(&zoe)).await.expect("still there");
    assert_eq!(
        after[EXT_URN]["coreTeam"], "Legacy",
        "never adopted or updated"
    );
    assert!(after.get("externalId").is_none());
    assert_eq!(
        ws.peer
            .users()
            .await
            .iter()
            .filter(|user| user["userName"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(ZOE)))
            .count(),
        1,
        "no POST for the protected user"
    );

    // Without read-back the state does not know the account: still no create for Zoë.
    configure(&mut ws, "put", false, "");
    let incremental = ws.sync(&[], 0);
    assert_eq!(action(&incremental, "E1007")["op"], "protected");
}

/// A workspace whose target is the fake SCIM server (for target behaviours the peer lacks: a
/// dropped or normalised attribute), with read-back and `update_with`.
async fn against_fake(update_with: &str) -> (FakeScim, Workspace) {
    let fake = FakeScim::start().await;
    let mut ws = Workspace::new();
    ws.peer.base_url = fake.base_url.clone();
    ws.peer.token = fake.token.clone();
    configure(&mut ws, update_with, true, "");
    (fake, ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_the_target_does_not_keep_is_reported_and_not_sent_again() {
    let (fake, mut ws) = against_fake("put").await;
    fake.drop_undeclared("udf_shoeSize");
    ws.mapping = ws
        .mapping
        .replace("[mapping.udf]\n", "[mapping.udf]\nshoeSize = \"42\"\n");

    let first = ws.sync(&[], 0);
    let created = first["summary"]["create"].as_u64().expect("creates");
    assert!(created > 0);
    assert_eq!(first["summary"]["not_kept"], created, "{first:#}");
    let warnings = first["warnings"].as_array().expect("warnings");
    assert_eq!(
        warnings
            .iter()
            .filter(|w| w
                .as_str()
                .is_some_and(|w| w.starts_with("udf_shoeSize: not kept by the target")))
            .count(),
        1,
        "one warning for the attribute: {warnings:?}"
    );

    // The next full run reads the accounts back without the value: nothing is sent again.
    fake.clear_requests();
    let again = ws.sync(&[], 0);
    assert_eq!(again["summary"]["update"], 0, "{again:#}");
    assert_eq!(again["summary"]["drift_repaired"], 0);
    assert_eq!(fake.count("PUT") + fake.count("PATCH"), 0);
    assert_eq!(
        again["summary"]["not_kept"], created,
        "still reported while it lasts"
    );
    let status = ws.run(&["status"]);
    assert!(
        status
            .stdout
            .contains(&format!("udf_shoeSize: {created} user(s)")),
        "status lists it: {}",
        status.stdout
    );

    // A new mapped value is sent again (and reported again).
    ws.mapping = ws.mapping.replace("shoeSize = \"42\"", "shoeSize = \"43\"");
    fake.clear_requests();
    let changed = ws.sync(&[], 0);
    assert_eq!(changed["summary"]["update"], created, "{changed:#}");
    assert_eq!(fake.count("PUT") as u64, created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_the_target_keeps_in_its_own_form_is_confirmed_and_not_sent_again() {
    let (fake, mut ws) = against_fake("put").await;
    fake.lowercase("coreTeam");

    let first = ws.sync(&[], 0);
    let created = first["summary"]["create"].as_u64().expect("creates");
    assert!(created > 0);
    assert_eq!(first["summary"]["not_kept"], 0, "a form is kept: {first:#}");
    assert!(
        fake.users().iter().all(|user| user[EXT_URN]["coreTeam"]
            .as_str()
            .is_none_or(|team| team == team.to_lowercase())),
        "the target holds its own form"
    );

    // Full runs read the accounts back in SocialTalent's form: neither drift nor an update.
    for round in 0..2 {
        fake.clear_requests();
        let again = ws.sync(&["--full"], 0);
        assert_eq!(again["summary"]["update"], 0, "round {round}: {again:#}");
        assert_eq!(again["summary"]["drift_repaired"], 0, "round {round}");
        assert!(
            again["drift"].as_array().is_none_or(Vec::is_empty),
            "round {round}: {again:#}"
        );
        assert_eq!(fake.count("PUT") + fake.count("PATCH"), 0, "round {round}");
    }

    // A real change there (not the form of our value) is still drift, and repaired.
    let any = fake
        .users()
        .into_iter()
        .find(|user| user[EXT_URN]["coreTeam"].is_string())
        .expect("an account with a core team");
    let id = any["id"].as_str().expect("id").to_owned();
    fake.edit_user(&id, |user| {
        user[EXT_URN]["coreTeam"] = json!("somewhere else");
    });
    let repaired = ws.sync(&["--full"], 0);
    assert_eq!(repaired["summary"]["drift_repaired"], 1, "{repaired:#}");

    // A new mapped value is sent (and its form recorded again).
    ws.mapping = ws.mapping.replace(
        "coreTeam = \"{{ user.department }}\"",
        "coreTeam = \"Team {{ user.department }}\"",
    );
    fake.clear_requests();
    let moved = ws.sync(&["--full"], 0);
    assert_eq!(moved["summary"]["update"], created, "{moved:#}");
    fake.clear_requests();
    let settled = ws.sync(&["--full"], 0);
    assert_eq!(settled["summary"]["update"], 0, "{settled:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_patched_without_an_answer_is_judged_by_the_next_read_back() {
    let (fake, mut ws) = against_fake("patch").await;
    fake.lowercase("coreTeam");
    let first = ws.sync(&[], 0);
    let created = first["summary"]["create"].as_u64().expect("creates");

    // A new core team goes out by PATCH, answered 204: nothing to judge by yet.
    ws.mapping = ws.mapping.replace(
        "coreTeam = \"{{ user.department }}\"",
        "coreTeam = \"Team {{ user.department }}\"",
    );
    let patched = ws.sync(&[], 0);
    assert_eq!(patched["summary"]["update"], created, "{patched:#}");

    // The next read-back finds SocialTalent's form of it: confirmed, not drift, not re-sent.
    for round in 0..2 {
        fake.clear_requests();
        let judged = ws.sync(&["--full"], 0);
        assert_eq!(judged["summary"]["update"], 0, "round {round}: {judged:#}");
        assert_eq!(judged["summary"]["not_kept"], 0, "round {round}");
        assert_eq!(fake.count("PATCH") + fake.count("PUT"), 0, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_patched_without_an_answer_is_judged_by_the_next_read_back() {
    let (fake, mut ws) = against_fake("patch").await;
    fake.drop_undeclared("udf_shoeSize");
    let first = ws.sync(&[], 0);
    let created = first["summary"]["create"].as_u64().expect("creates");

    // A new mapped attribute goes out by PATCH, answered 204: nothing to judge by yet.
    ws.mapping = ws
        .mapping
        .replace("[mapping.udf]\n", "[mapping.udf]\nshoeSize = \"42\"\n");
    let patched = ws.sync(&[], 0);
    assert_eq!(patched["summary"]["update"], created, "{patched:#}");

    // The next read-back finds it missing: not kept, reported, and not sent again.
    fake.clear_requests();
    let judged = ws.sync(&[], 0);
    assert_eq!(judged["summary"]["update"], 0, "{judged:#}");
    assert_eq!(judged["summary"]["drift_repaired"], 0);
    assert_eq!(judged["summary"]["not_kept"], created);
    assert_eq!(fake.count("PATCH"), 0);
    let again = ws.sync(&[], 0);
    assert_eq!(again["summary"]["update"], 0, "{again:#}");
    assert_eq!(again["summary"]["not_kept"], created);
}
