use serde_json::json;

use super::*;
use crate::model::AccountStatus;

fn record(scim_id: &str) -> UserRecord {
    UserRecord {
        scim_id: scim_id.into(),
        user_name: "ana@example.com".into(),
        pushed: serde_json::from_value(json!({"userName": "ana@example.com", "coreTeam": "Sales"}))
            .expect("attributes"),
        status: AccountStatus::Active,
        updated_at: now_rfc3339(),
    }
}

/// Opens a state this process had open a moment ago: sled's flusher thread can hold the file
/// lock briefly after the last handle is dropped (a new process never sees this; its
/// predecessor's lock went with it).
fn reopen(path: &std::path::Path) -> Result<State, StateError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match State::open(path) {
            Err(StateError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

#[test]
fn records_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = IdpId("00u1".into());
    {
        let state = State::open(dir.path()).expect("opens");
        state.record_success(&id, &record("s1")).expect("writes");
        state.flush().expect("flushes");
    }
    let state = reopen(dir.path()).expect("reopens");
    let snapshot = state.snapshot().expect("reads");
    let read_back = &snapshot.users[&id];
    let written = record("s1");
    assert_eq!(read_back.scim_id, written.scim_id);
    assert_eq!(read_back.pushed, written.pushed);
    assert_eq!(read_back.status, AccountStatus::Active);
}

#[test]
fn failures_count_up_and_a_success_clears_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = State::open(dir.path()).expect("opens");
    let id = IdpId("00u2".into());
    assert_eq!(
        state
            .record_failure(&id, "bo@example.com", "boom")
            .expect("writes"),
        1
    );
    assert_eq!(
        state
            .record_failure(&id, "bo@example.com", "boom again")
            .expect("writes"),
        2
    );
    let snapshot = state.snapshot().expect("reads");
    assert_eq!(snapshot.failures[&id].consecutive, 2);
    assert_eq!(snapshot.failures[&id].last_error, "boom again");
    state.record_success(&id, &record("s2")).expect("writes");
    assert!(state.snapshot().expect("reads").failures.is_empty());
}

#[test]
fn a_second_opener_is_refused_with_the_directory_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _first = State::open(dir.path()).expect("opens");
    // sled's lock is per process for the same path inside one process too (flock on the file).
    match State::open(dir.path()) {
        Err(error @ StateError::Locked { .. }) => {
            let message = error.to_string();
            assert!(
                message.contains(&dir.path().display().to_string()),
                "{message}"
            );
            assert!(message.contains("pid "), "{message}");
        }
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("a second open must fail"),
    }
}

#[test]
fn a_newer_format_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let state = State::open(dir.path()).expect("opens");
        state.set_meta("format_version", "99").expect("writes");
        state.flush().expect("flushes");
    }
    let error = reopen(dir.path()).expect_err("newer format");
    assert!(
        matches!(error, StateError::NewerFormat { found: 99, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("upgrade socialtalent-sync"));
}

#[test]
fn run_history_is_newest_first_and_bounded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = State::open(dir.path()).expect("opens");
    for index in 0..(RUNS_KEPT + 5) {
        state
            .record_run(&RunRecord {
                started_at: format!("run {index}"),
                finished_at: String::new(),
                full: true,
                source: "file".into(),
                users_read: index,
                summary: Summary::default(),
                outcome: "ok".into(),
                error: None,
                held: Vec::new(),
            })
            .expect("writes");
    }
    let runs = state.recent_runs(3).expect("reads");
    assert_eq!(
        runs.iter().map(|r| r.users_read).collect::<Vec<_>>(),
        vec![RUNS_KEPT + 4, RUNS_KEPT + 3, RUNS_KEPT + 2]
    );
    assert_eq!(
        state.recent_runs(usize::MAX).expect("reads").len(),
        RUNS_KEPT
    );
}
