//! The administrator's kit around the binary: `--version` names the commit and the state format.

use std::process::Command;

fn version_output(flag: &str) -> String {
    let output = assert_cmd::Command::cargo_bin("socialtalent-sync")
        .expect("binary")
        .arg(flag)
        .output()
        .expect("runs");
    assert!(output.status.success(), "{flag} exited {:?}", output.status);
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn version_names_the_release_the_commit_and_the_state_format() {
    let text = version_output("--version");
    let expected_start = format!("socialtalent-sync {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&expected_start), "{text}");
    assert!(
        text.ends_with(&format!(
            ", state format {})",
            socialtalent_sync::state::FORMAT_VERSION
        )),
        "{text}"
    );
    // The commit is this checkout's HEAD when git can say (a build from a tarball says
    // "unknown").
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    let commit = text
        .split("(commit ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("a commit");
    match head {
        Some(head) => assert_eq!(commit, head, "{text}"),
        None => assert_eq!(commit, "unknown", "{text}"),
    }
    assert_eq!(version_output("-V"), text);
}

/// The `socialtalent_sync_*` metric names a text mentions (PromQL in a dashboard or rules).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    const PREFIX: &str = "socialtalent_sync_";
    text.match_indices(PREFIX)
        .map(|(index, _)| {
            text[index..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| name.len() > PREFIX.len())
        .collect()
}

/// Every metric the Grafana dashboard and the Prometheus rules query is one the daemon's
/// `/metrics` serves, after a real run against the SCIM peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_the_alerts_query_metrics_the_daemon_serves() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("deploy/grafana/socialtalent-sync.json"))
            .expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut queries = String::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} has no query", panel["title"]);
        for target in targets {
            queries.push_str(target["expr"].as_str().expect("expr"));
            queries.push('\n');
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        queries.push_str(&variable["definition"].to_string());
    }
    let dashboard_names = metric_names(&queries);
    let alert_names = metric_names(
        &std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).expect("alerts.yml"),
    );
    for wanted in [
        "socialtalent_sync_runs_total",
        "socialtalent_sync_run_duration_seconds_bucket",
        "socialtalent_sync_actions_total",
        "socialtalent_sync_scim_retries_total",
        "socialtalent_sync_rate_limit_wait_seconds_total",
        "socialtalent_sync_held_deactivations",
        "socialtalent_sync_quarantined_users",
        "socialtalent_sync_last_success_timestamp_seconds",
    ] {
        assert!(
            dashboard_names.contains(wanted),
            "the dashboard misses {wanted}"
        );
    }

    let mut ws = crate::support::Workspace::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    ws.sections = format!(
        "[schedule]\ncron = \"*/2 * * * * *\"\n\n[observability]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    let mut child = ws.spawn(&["run"]);
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let get = async |path: &str| {
        let response = client
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            .ok()?;
        Some((response.status().as_u16(), response.text().await.ok()?))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let metrics = loop {
        if let Some((200, _)) = get("/healthz").await {
            break get("/metrics").await.expect("metrics").1;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "no healthy run within 60 s; daemon log:\n{}",
                ws.daemon_log()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let _ = child.kill();
    let _ = child.wait();

    let served: std::collections::BTreeSet<String> = metrics
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    let missing: Vec<String> = dashboard_names
        .iter()
        .chain(&alert_names)
        .filter(|name| !served.contains(*name))
        .cloned()
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not served: {missing:?}\n/metrics:\n{metrics}"
    );
}

/// The user the container image runs as (distroless "nonroot").
const IMAGE_UID: u32 = 65532;

/// The runtime contract the `Containerfile` and `deploy/kubernetes/` rely on, outside a
/// container: an unprivileged user; the configuration found through `$SOCIALTALENT_SYNC_CONFIG`
/// in a read-only directory; secrets as files in a read-only `$CREDENTIALS_DIRECTORY` named by a
/// relative `*_file` key; the state on a "mounted" directory given by `$STATE_DIRECTORY`
/// (owned by the user, as `fsGroup` makes it), persisted across runs, kept private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_runtime_contract_holds_outside_a_container() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;

    let ws = crate::support::Workspace::new();
    let root = tempfile::tempdir().expect("temp dir");
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    };
    chmod(root.path(), 0o755);
    // As root (CI), the commands run as the image's user and the "volumes" are set up the way
    // Kubernetes mounts them; as anyone else, they run as that (unprivileged) user.
    let as_root = unsafe { libc::geteuid() } == 0;
    let user = if as_root {
        IMAGE_UID
    } else {
        unsafe { libc::geteuid() }
    };
    let chown = |path: &std::path::Path| {
        if as_root {
            std::os::unix::fs::chown(path, Some(IMAGE_UID), Some(IMAGE_UID)).expect("chown");
        }
    };

    let config_dir = root.path().join("etc");
    let secrets = root.path().join("secrets");
    let state = root.path().join("state");
    for dir in [&config_dir, &secrets, &state] {
        std::fs::create_dir(dir).expect("mkdir");
    }
    std::fs::write(
        config_dir.join("config.toml"),
        format!(
            "[source]\nkind = \"file\"\n[source.file]\npath = \"directory.json\"\n\n\
             [target]\nbase_url = \"{}\"\ntoken_file = \"scim-token\"\n\n\
             [reconcile]\nread_back = false\n{}",
            ws.peer.base_url,
            crate::support::EXAMPLE_MAPPING
        ),
    )
    .expect("config");
    std::fs::write(
        config_dir.join("directory.json"),
        serde_json::to_string(&crate::support::example_directory()).expect("json"),
    )
    .expect("directory");
    std::fs::write(secrets.join("scim-token"), format!("{}\n", ws.peer.token)).expect("secret");
    // A ConfigMap and a Secret are read-only to the pod; the secret readable by its group.
    chmod(&config_dir.join("config.toml"), 0o444);
    chmod(&config_dir.join("directory.json"), 0o444);
    chmod(&config_dir, 0o555);
    if as_root {
        std::os::unix::fs::chown(secrets.join("scim-token"), Some(0), Some(IMAGE_UID))
            .expect("chown");
    }
    chmod(&secrets.join("scim-token"), 0o440);
    chmod(&secrets, 0o555);
    // The volume: an empty directory that belongs to the pod's user.
    chown(&state);
    chmod(&state, 0o770);

    let run = |args: &[&str]| {
        let mut command =
            std::process::Command::new(assert_cmd::cargo::cargo_bin("socialtalent-sync"));
        command
            .current_dir("/")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("SOCIALTALENT_SYNC_CONFIG", config_dir.join("config.toml"))
            .env("CREDENTIALS_DIRECTORY", &secrets)
            .env("STATE_DIRECTORY", &state)
            .args(args);
        // SAFETY: umask(2) is async-signal-safe and cannot fail; it changes only the child.
        unsafe {
            command.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
        // From root, std drops the supplementary groups too (setgroups(0)).
        if as_root {
            command.uid(IMAGE_UID).gid(IMAGE_UID);
        }
        let output = command.output().expect("runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (code, _, stderr) = run(&["check-config"]);
    assert_eq!(code, Some(0), "check-config: {stderr}");
    let (code, stdout, stderr) = run(&["sync", "--output", "json"]);
    assert_eq!(code, Some(0), "sync: {stdout}\n{stderr}");
    assert!(!stdout.contains(&ws.peer.token) && !stderr.contains(&ws.peer.token));
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["summary"]["create"], 21, "{report}");
    assert_eq!(ws.peer.users().await.len(), 21);

    // The state is on the volume, written by the unprivileged user.
    let mut written = Vec::new();
    let mut pending = vec![state.clone()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("state") {
            let entry = entry.expect("entry");
            let metadata = entry.metadata().expect("metadata");
            assert_eq!(
                metadata.uid(),
                user,
                "{} belongs to {}",
                entry.path().display(),
                metadata.uid()
            );
            if metadata.is_dir() {
                pending.push(entry.path());
            }
            written.push((entry.path(), metadata.mode() & 0o777));
        }
    }
    assert!(
        written.iter().any(|(path, _)| path.ends_with("db")),
        "nothing was written to the state volume: {written:?}"
    );
    // The state's files and directories are private to the user whatever the umask (022 here,
    // as in most container runtimes): files 0600, directories 0700.
    let open_to_others: Vec<_> = written
        .iter()
        .filter(|(_, mode)| mode & 0o077 != 0)
        .collect();
    assert!(open_to_others.is_empty(), "{open_to_others:?}");

    // A restarted pod on the same volume finds its state: nothing left to do.
    let (code, stdout, stderr) = run(&["sync", "--output", "json"]);
    assert_eq!(code, Some(0), "second sync: {stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["summary"]["create"], 0, "{report}");
    assert_eq!(report["summary"]["unchanged"], 21, "{report}");
    let (code, stdout, _) = run(&["status", "--output", "json"]);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("21"), "{stdout}");
}

/// `check-config` reports every problem of a file in one pass, each with its key, line and
/// column, and exits 2 with their count.
#[test]
fn check_config_reports_every_problem_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("config.toml");
    let text = "[source]\nkind = \"file\"\n[source.file]\npath = \"directory.json\"\n\n\
                [target]\nbase_url = \"http://socialtalent.example/scim/v2\"\ntoken = \"x\"\nburst = 0\n\n\
                [schedule]\ncron = \"*/10 * * *\"\n\n\
                [mapping]\nuserName = \"{{ user.email | lower }}\"\nrole = { rules = 1 }\n";
    std::fs::write(&config, text).expect("write");
    let output = assert_cmd::Command::cargo_bin("socialtalent-sync")
        .expect("binary")
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for (key, line) in [
        ("target.base_url", 7),
        ("target.burst", 9),
        ("schedule.cron", 12),
        ("mapping.role", 16),
    ] {
        assert!(
            stderr.contains(&format!("{key} (line {line}, column ")),
            "{key} at line {line}: {stderr}"
        );
    }
    assert!(stderr.contains("4 problems in"), "{stderr}");
}
