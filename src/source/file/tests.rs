use std::io::Write;

use super::*;

fn read_text(name: &str, text: &str) -> SourceRead {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(name);
    std::fs::File::create(&path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .expect("write");
    read(&path, &["groups".to_owned(), "managedTeams".to_owned()]).expect("readable")
}

#[test]
fn a_json_array_is_normalised_and_managers_are_resolved() {
    let read = read_text(
        "dir.json",
        r#"[
          {"id": "E1", "login": "ana", "email": "ana@x.com", "department": "Sales", "groups": ["A"], "customerId": "C-1"},
          {"id": 2, "email": "bo@x.com", "manager_id": "E1", "active": "false"},
          {"id": "E3", "status": "leaver"}
        ]"#,
    );
    assert!(read.full);
    assert!(read.rejected.is_empty(), "{:?}", read.rejected);
    let ana = &read.users[0];
    assert_eq!(ana.department.as_deref(), Some("Sales"));
    assert_eq!(ana.attrs.to_map()["customerId"], "C-1");
    assert!(ana.active);
    let bo = &read.users[1];
    assert_eq!(bo.id.0, "2");
    assert!(!bo.active);
    assert_eq!(
        bo.manager.as_ref().map(|m| m.email.as_deref()),
        Some(Some("ana@x.com"))
    );
    assert!(!read.users[2].active, "status leaver means inactive");
}

#[test]
fn json_lines_reject_bad_lines_and_go_on() {
    let read = read_text(
        "dir.jsonl",
        "{\"id\": \"a\"}\n{not json\n\n{\"id\": \"b\", \"groups\": 7}\n{\"id\": \"c\"}\n",
    );
    let ids: Vec<_> = read.users.iter().map(|u| u.id.0.as_str()).collect();
    assert_eq!(ids, vec!["a", "c"]);
    assert_eq!(read.rejected.len(), 2);
    assert_eq!(read.rejected[0].idp_id, None);
    assert_eq!(read.rejected[0].location, "dir.jsonl line 2");
    assert_eq!(read.rejected[1].idp_id, Some(IdpId("b".into())));
    assert_eq!(
        read.rejected[1].error,
        "field `groups` must be a list of strings, found a number"
    );
}

#[test]
fn csv_cells_are_typed_and_lists_split() {
    let read = read_text(
        "dir.csv",
        "id,email,active,groups,isManager,managedTeams,department\n\
         E1,ana@x.com,true,SocialTalent;LP Onboarding,false,Sales EMEA;Sales US,\n\
         E2,bo@x.com,false,,true,,Sales\n",
    );
    let ana = &read.users[0];
    assert_eq!(ana.groups, vec!["SocialTalent", "LP Onboarding"]);
    assert_eq!(ana.attrs.to_map()["isManager"], false);
    assert_eq!(
        ana.attrs.to_map()["managedTeams"],
        serde_json::json!(["Sales EMEA", "Sales US"])
    );
    assert_eq!(ana.department, None, "an empty cell is missing");
    assert!(!read.users[1].active);
}

#[test]
fn a_csv_cell_with_a_semicolon_is_one_value_unless_its_column_is_a_list() {
    let read = read_text(
        "dir.csv",
        "id,email,title,costCenter,groups\n\
         E1,ana@x.com,Director; Sales,CC-1;CC-2,A;B\n",
    );
    assert!(read.rejected.is_empty(), "{:?}", read.rejected);
    let ana = &read.users[0];
    assert_eq!(ana.title.as_deref(), Some("Director; Sales"));
    assert_eq!(ana.attrs.to_map()["costCenter"], "CC-1;CC-2");
    assert_eq!(ana.groups, vec!["A", "B"]);
}

#[test]
fn a_ragged_csv_row_is_rejected_alone() {
    let read = read_text(
        "dir.csv",
        "id,email\nE1,a@x.com\nE2,b@x.com,extra\nE3,c@x.com\n",
    );
    assert_eq!(read.users.len(), 2);
    assert_eq!(read.rejected[0].location, "dir.csv line 3");
}

#[test]
fn duplicate_ids_keep_the_first_and_report_the_second() {
    let read = read_text(
        "d.json",
        r#"[{"id": "a", "email": "1"}, {"id": "a", "email": "2"}]"#,
    );
    assert_eq!(read.users.len(), 1);
    assert_eq!(read.users[0].email.as_deref(), Some("1"));
    assert!(read.rejected[0].error.starts_with("duplicate id a"));
}

#[test]
fn an_unknown_manager_is_a_warning_not_an_error() {
    let read = read_text("d.json", r#"[{"id": "a", "manager_id": "ghost"}]"#);
    assert_eq!(read.users[0].manager, None);
    assert_eq!(
        read.warnings,
        vec![
            "d.json: user a has manager_id ghost, which matches nobody; provisioned without a manager"
        ]
    );
}

#[test]
fn a_truncated_file_fails_the_whole_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("d.json");
    std::fs::write(&path, r#"[{"id": "a"}, {"id": "#).expect("write");
    let error = read(&path, &[]).expect_err("truncated");
    assert!(
        error.to_string().contains("not a valid JSON array"),
        "{error}"
    );
    assert!(error.to_string().contains("d.json"), "{error}");
}

#[test]
fn a_value_no_map_can_hold_rejects_its_record_alone_with_its_id() {
    // A lone surrogate (a truncated emoji) and a number beyond f64 are valid JSON syntax but
    // cannot be read into a map: the record must be rejected (protecting its user), never
    // accepted with its attributes silently empty.
    for (name, text) in [
        (
            "d.jsonl",
            "{\"id\": \"a\", \"email\": \"a@x.com\"}\n{\"id\": \"b\", \"note\": \"\\ud800\"}\n{\"id\": \"c\", \"n\": 1e400}\n",
        ),
        (
            "d.json",
            "[{\"id\": \"a\", \"email\": \"a@x.com\"}, {\"id\": \"b\", \"note\": \"x\\udc00\"}, {\"id\": \"c\", \"n\": -1e999}]",
        ),
    ] {
        let read = read_text(name, text);
        let ids: Vec<_> = read.users.iter().map(|u| u.id.0.as_str()).collect();
        assert_eq!(ids, vec!["a"], "{name}");
        let rejected: Vec<_> = read
            .rejected
            .iter()
            .map(|r| r.idp_id.as_ref().map(|id| id.0.as_str()))
            .collect();
        assert_eq!(rejected, vec![Some("b"), Some("c")], "{name}");
        assert!(
            read.rejected[0].error.starts_with("not valid JSON"),
            "{}",
            read.rejected[0].error
        );
    }
}
