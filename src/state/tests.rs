use serde_json::json;

use super::*;
use crate::model::{AccountStatus, Digest, attributes_digest};

fn record(scim_id: &str) -> UserRecord {
    UserRecord {
        scim_id: scim_id.into(),
        user_name: "ana@example.com".into(),
        pushed: serde_json::from_value(json!({"userName": "ana@example.com", "coreTeam": "Sales"}))
            .expect("attributes"),
        status: AccountStatus::Active,
        updated_at: now_rfc3339(),
        digest: Some(Digest(7)),
        pushed_digest: None,
        not_kept: Vec::new(),
        unconfirmed: Vec::new(),
        normal: Default::default(),
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
    let mut snapshot = state.snapshot().expect("reads");
    let written = record("s1");
    {
        let read_back = &snapshot.users[&id];
        assert_eq!(read_back.scim_id, written.scim_id);
        assert_eq!(read_back.status, AccountStatus::Active);
        assert_eq!(read_back.digest, Some(Digest(7)));
        assert_eq!(
            read_back.pushed_digest,
            Some(attributes_digest(&written.pushed)),
            "the state fingerprints what it stores"
        );
        assert_eq!(
            read_back.pushed, None,
            "a snapshot leaves the attributes on disk"
        );
    }
    state
        .load_pushed(&mut snapshot, std::slice::from_ref(&id))
        .expect("loads");
    assert_eq!(snapshot.users[&id].pushed.as_deref(), Some(&written.pushed));
}

#[test]
fn a_refresh_records_the_digest_of_an_active_user_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = State::open(dir.path()).expect("opens");
    let active = IdpId("00u1".into());
    let gone = IdpId("00u2".into());
    state
        .record_success(&active, &record("s1"))
        .expect("writes");
    let mut deactivated = record("s2");
    deactivated.status = AccountStatus::Deactivated;
    state.record_success(&gone, &deactivated).expect("writes");
    state
        .refresh_digests(
            &[(active.clone(), Digest(9)), (gone.clone(), Digest(9))],
            &["userName".to_owned(), "coreTeam".to_owned()],
        )
        .expect("refreshes");
    let snapshot = state.snapshot().expect("reads");
    assert_eq!(snapshot.users[&active].digest, Some(Digest(9)));
    assert_eq!(snapshot.users[&gone].digest, Some(Digest(7)));
    let stored = state.user(&active).expect("reads").expect("exists");
    assert_eq!(
        stored.pushed,
        record("s1").pushed,
        "a refresh keeps the attributes"
    );
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

#[test]
fn a_version_1_state_is_converted_on_open_and_keeps_every_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = IdpId("00u1".into());
    let v1 = record("s1");
    {
        // A version-1 state: the attributes inside the user record, no digests.
        let state = State::open(dir.path()).expect("opens");
        let inline = json!({
            "scim_id": v1.scim_id,
            "user_name": v1.user_name,
            "pushed": v1.pushed,
            "status": "active",
            "updated_at": v1.updated_at,
        });
        state
            .users
            .insert(id.0.as_bytes(), serde_json::to_vec(&inline).expect("json"))
            .expect("writes");
        state.set_meta("format_version", "1").expect("writes");
        state.flush().expect("flushes");
    }
    let state = reopen(dir.path()).expect("converts");
    assert_eq!(
        state.meta("format_version").expect("reads").as_deref(),
        Some("2")
    );
    let stored = state.user(&id).expect("reads").expect("kept");
    assert_eq!(stored.scim_id, "s1");
    assert_eq!(stored.pushed, v1.pushed);
    assert_eq!(
        stored.digest, None,
        "no digest: the next run compares and records one"
    );
    let snapshot = state.snapshot().expect("reads");
    assert_eq!(
        snapshot.users[&id].pushed_digest,
        Some(attributes_digest(&v1.pushed))
    );
    let raw = state
        .users
        .get(id.0.as_bytes())
        .expect("reads")
        .expect("kept");
    assert!(
        !String::from_utf8_lossy(&raw).contains("coreTeam"),
        "the record no longer carries the attributes"
    );
}

#[test]
fn a_record_loses_its_digest_before_its_attributes_are_replaced() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = State::open(dir.path()).expect("opens");
    let id = IdpId("00u1".into());
    state.record_success(&id, &record("s1")).expect("writes");
    state.forget_digest(&id).expect("forgets");
    let mut snapshot = state.snapshot().expect("reads");
    assert_eq!(
        snapshot.users[&id].digest, None,
        "a run that stops here maps and compares the user"
    );
    state
        .load_pushed(&mut snapshot, std::slice::from_ref(&id))
        .expect("loads");
    assert_eq!(
        snapshot.users[&id].pushed.as_deref(),
        Some(&record("s1").pushed),
        "the attributes SocialTalent holds are kept"
    );

    let newer: Attributes =
        serde_json::from_value(json!({"userName": "ana@example.com", "coreTeam": "Support"}))
            .expect("attributes");
    state
        .record_active(
            &id,
            "s1",
            "ana@example.com",
            &newer,
            Some(Digest(9)),
            &Keeping::default(),
        )
        .expect("records");
    let mut snapshot = state.snapshot().expect("reads");
    let known = &snapshot.users[&id];
    assert_eq!(known.digest, Some(Digest(9)));
    assert_eq!(known.pushed_digest, Some(attributes_digest(&newer)));
    assert_eq!(known.status, AccountStatus::Active);
    state
        .load_pushed(&mut snapshot, std::slice::from_ref(&id))
        .expect("loads");
    assert_eq!(snapshot.users[&id].pushed.as_deref(), Some(&newer));
}

#[test]
fn a_success_clears_a_failure_count_found_on_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let id = IdpId("00u1".into());
    let other = IdpId("00u2".into());
    {
        let state = State::open(dir.path()).expect("opens");
        state.record_failure(&id, "ana", "400").expect("counts");
        state.record_failure(&other, "bo", "400").expect("counts");
        state.flush().expect("flushes");
    }
    let state = reopen(dir.path()).expect("reopens");
    let pushed = record("s1").pushed;
    state
        .record_active(
            &id,
            "s1",
            "ana@example.com",
            &pushed,
            None,
            &Keeping::default(),
        )
        .expect("records");
    let snapshot = state.snapshot().expect("reads");
    assert!(
        !snapshot.failures.contains_key(&id),
        "the success clears it"
    );
    assert_eq!(
        snapshot.failures[&other].consecutive, 1,
        "others keep theirs"
    );
}

fn failed_run(error: &str) -> RunRecord {
    RunRecord {
        started_at: "2026-12-01T10:00:00Z".into(),
        finished_at: "2026-12-01T10:00:01Z".into(),
        full: true,
        source: "okta".into(),
        users_read: 0,
        summary: Summary::default(),
        outcome: "failed".into(),
        error: Some(error.into()),
        held: Vec::new(),
    }
}

const QUOTED: &str = "Okta rejected /api/v1/users (400: no Okta error in the body, which starts \
                      \"GET /api/v1/users HTTP/1.1 Authorization: SSWS 00stateTok3nQuotedBack9\")";

#[test]
fn a_run_record_is_stored_without_credentials() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = State::open(dir.path()).expect("opens");
    state.record_run(&failed_run(QUOTED)).expect("writes");
    state
        .record_failure(&IdpId("00u1".into()), "ana@example.com", QUOTED)
        .expect("writes");
    let runs = state.recent_runs(1).expect("reads");
    let error = runs[0].error.as_deref().expect("the error is kept");
    assert!(!error.contains("00stateTok3nQuotedBack9"), "{error}");
    assert!(
        error.starts_with("Okta rejected /api/v1/users (400"),
        "{error}"
    );
    let snapshot = state.snapshot().expect("reads");
    let failure = snapshot.failures.values().next().expect("one failure");
    assert!(!failure.last_error.contains("00stateTok3nQuotedBack9"));
}

#[test]
fn records_stored_before_the_redaction_fix_are_scrubbed_on_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let state = State::open(dir.path()).expect("opens");
        // What an older version stored: the record as it was, and no redaction level.
        let value = serde_json::to_vec(&failed_run(QUOTED)).expect("serialises");
        state
            .runs
            .insert(7_u64.to_be_bytes(), value)
            .expect("writes");
        let failure = FailureRecord {
            consecutive: 1,
            last_error: QUOTED.into(),
            label: "ana@example.com".into(),
            last_failed_at: now_rfc3339(),
        };
        state
            .failures
            .insert(b"00u1", serde_json::to_vec(&failure).expect("serialises"))
            .expect("writes");
        state.meta.remove("redaction").expect("removes");
        state.flush().expect("flushes");
    }
    let state = reopen(dir.path()).expect("reopens");
    let stored = |tree: &sled::Tree| -> Vec<String> {
        tree.iter()
            .map(|item| String::from_utf8_lossy(&item.expect("reads").1).into_owned())
            .collect()
    };
    for text in stored(&state.runs)
        .iter()
        .chain(stored(&state.failures).iter())
    {
        assert!(!text.contains("00stateTok3nQuotedBack9"), "{text}");
        assert!(text.contains("Authorization: ***"), "{text}");
    }
    assert_eq!(
        state.meta_u32("redaction").expect("reads"),
        Some(REDACTION_LEVEL)
    );
}

#[test]
fn the_state_is_private_and_an_open_directory_is_named() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().expect("temp dir");
    let path = parent.path().join("state");
    let state = State::open(&path).expect("opens");
    state.flush().expect("flushes");
    let mode = |path: &Path| {
        std::fs::metadata(path)
            .expect("exists")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&path), 0o700);
    let mut files = 0;
    let mut stack = vec![path.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("lists") {
            let entry = entry.expect("lists");
            if entry.file_type().expect("typed").is_dir() {
                assert_eq!(mode(&entry.path()), 0o700, "{}", entry.path().display());
                stack.push(entry.path());
            } else {
                files += 1;
                assert_eq!(mode(&entry.path()), 0o600, "{}", entry.path().display());
            }
        }
    }
    assert!(files >= 2, "sled's files and the owner file");
    assert_eq!(open_to_others(&path), None);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    assert_eq!(open_to_others(&path), Some(0o755));
}

#[test]
fn run_records_are_scrubbed_on_the_way_out_of_secrets_learnt_later() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = State::open(dir.path()).expect("opens");
    // Stored before the process knew the secret (an older version's record, say).
    let record = failed_run("the token L8terKnownSecretValue42 is not valid");
    let value = serde_json::to_vec(&record).expect("serialises");
    state
        .runs
        .insert(9_u64.to_be_bytes(), value)
        .expect("writes");
    crate::net::redact::register_secret("L8terKnownSecretValue42");
    let runs = state.recent_runs(1).expect("reads");
    assert_eq!(
        runs[0].error.as_deref(),
        Some("the token *** is not valid"),
        "{runs:?}"
    );
}

#[test]
fn a_table_is_replaced_or_merged_under_its_prefix_before_the_cursors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = State::open(dir.path()).expect("state");
    state.set_meta("t.other", "kept").expect("meta");
    let table = |prefix: &str| -> Vec<(String, String)> {
        let mut found = Vec::new();
        for item in state.meta.scan_prefix(prefix.as_bytes()) {
            let (key, value) = item.expect("entry");
            found.push((
                String::from_utf8_lossy(&key).into_owned(),
                String::from_utf8_lossy(&value).into_owned(),
            ));
        }
        found
    };
    let pair = |key: &str, value: &str| (key.to_owned(), value.to_owned());
    state
        .apply_source_commit(&SourceCommit {
            cursors: vec![pair("t.link", "1")],
            tables: vec![TableUpdate::Replace {
                prefix: "t.g.".into(),
                entries: vec![pair("a", "[1]"), pair("b", "[2]")],
            }],
            cache: CacheUpdate::Keep,
        })
        .expect("commit");
    state
        .apply_source_commit(&SourceCommit {
            cursors: vec![pair("t.link", "2")],
            tables: vec![TableUpdate::Merge {
                prefix: "t.g.".into(),
                set: vec![pair("c", "[3]"), pair("a", "[1,4]")],
                remove: vec!["b".into()],
            }],
            cache: CacheUpdate::Keep,
        })
        .expect("commit");
    assert_eq!(
        table("t.g."),
        vec![pair("t.g.a", "[1,4]"), pair("t.g.c", "[3]")]
    );
    // A full read's replacement drops what it does not name, under its prefix only.
    state
        .apply_source_commit(&SourceCommit {
            cursors: Vec::new(),
            tables: vec![TableUpdate::Replace {
                prefix: "t.g.".into(),
                entries: vec![pair("c", "[3]"), pair("d", "[5]")],
            }],
            cache: CacheUpdate::Keep,
        })
        .expect("commit");
    assert_eq!(
        table("t."),
        vec![
            pair("t.g.c", "[3]"),
            pair("t.g.d", "[5]"),
            pair("t.link", "2"),
            pair("t.other", "kept"),
        ]
    );
}
