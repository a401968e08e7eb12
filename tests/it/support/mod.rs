//! Shared test helpers: the real SCIM peer ([`peer`]) and a [`Workspace`] that runs the real
//! binary against it with a configuration, a directory file and a state of its own.

// Each test module uses its own subset of these helpers.
#![allow(dead_code)]

pub mod fake_graph;
pub mod fake_okta;
pub mod fake_onelogin;
pub mod fake_scim;
pub mod peer;
pub mod quote;

use std::path::{Path, PathBuf};

use serde_json::Value;

use peer::ScimPeer;

/// The environment variable the generated configurations read the SCIM token from.
pub const TOKEN_VAR: &str = "ST_SYNC_TEST_SCIM_TOKEN";

/// The example mapping of SPEC §4, as used by `examples/config.toml`.
pub const EXAMPLE_MAPPING: &str = r#"
[scope]
when = "user.active and 'SocialTalent' in user.groups"

[mapping]
userName = "{{ user.email | lower }}"
externalId = "{{ user.id }}"
"name.givenName" = "{{ user.given_name }}"
"name.familyName" = "{{ user.family_name }}"
emails = "{{ user.email }}"
title = "{{ user.title }}"
coreTeam = "{{ user.department }}"
reportsTo = "{{ user.manager.email | lower if user.manager }}"
learningPaths = { expr = "user.groups | select('startingwith', 'LP ') | map('replace', 'LP ', '') | list" }
teamsToManage = { expr = "user.attrs.managedTeams or []" }
role = { rules = [
  { when = "'SocialTalent Admins' in user.groups", value = "company_admin" },
  { when = "user.attrs.isManager", value = "advisor" },
], default = "user" }

[mapping.udf]
Customer_ID = "{{ user.attrs.customerId }}"
"#;

/// A temporary directory with a directory file, a configuration and a state, pointed at one
/// SCIM peer tenant.
pub struct Workspace {
    /// The temporary directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The peer tenant.
    pub peer: ScimPeer,
    /// Extra `[target]` lines (for example `update_with = "patch"`).
    pub target_extra: String,
    /// Extra top-level sections (for example a `[safety]` table).
    pub sections: String,
    /// The mapping (scope and `[mapping]`).
    pub mapping: String,
    /// The `[source]` section (the file source on `directory.json` by default).
    pub source: String,
    /// The `[reconcile]` settings (no read-back by default).
    pub reconcile: String,
}

/// The default `[source]` section of a workspace.
pub const FILE_SOURCE: &str =
    "[source]\nkind = \"file\"\n[source.file]\npath = \"directory.json\"\n";

/// What one run of the binary produced.
#[derive(Debug)]
pub struct Run {
    /// The exit code.
    pub code: i32,
    /// Standard output, parsed as JSON when it is JSON.
    pub json: Value,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Workspace {
    /// A workspace on a fresh peer tenant, holding a copy of the bundled example directory.
    pub fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("temp dir");
        let workspace = Workspace {
            dir,
            peer: peer::scim_peer(),
            target_extra: String::new(),
            sections: String::new(),
            mapping: EXAMPLE_MAPPING.to_owned(),
            source: FILE_SOURCE.to_owned(),
            reconcile: "read_back = false".to_owned(),
        };
        workspace.write_directory(&example_directory());
        workspace
    }

    /// The configuration file's path (written by [`Workspace::run`]).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// The state directory.
    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Replaces the directory file.
    pub fn write_directory(&self, users: &Value) {
        std::fs::write(
            self.dir.path().join("directory.json"),
            serde_json::to_string_pretty(users).expect("json"),
        )
        .expect("write directory");
    }

    /// The configuration text.
    pub fn config_text(&self) -> String {
        format!(
            r#"
{source}

[target]
base_url = "{base}"
token = "${{{TOKEN_VAR}}}"
{target}

[state]
path = "state"

[reconcile]
{reconcile}

{sections}
{mapping}
"#,
            target = self.target_lines(),
            source = self.source,
            reconcile = self.reconcile,
            base = self.peer.base_url,
            sections = self.sections,
            mapping = self.mapping,
        )
    }

    /// The `[target]` settings: fast defaults, each replaced by `target_extra` when it sets
    /// the same key.
    fn target_lines(&self) -> String {
        let defaults = [
            "requests_per_second = 200.0",
            "burst = 20",
            "max_in_flight = 4",
            "timeout = \"10s\"",
            "max_retries = 2",
        ];
        let overridden = |line: &str| {
            let key = line.split('=').next().unwrap_or_default().trim();
            self.target_extra
                .lines()
                .any(|extra| extra.split('=').next().unwrap_or_default().trim() == key)
        };
        let mut lines: Vec<&str> = defaults
            .into_iter()
            .filter(|line| !overridden(line))
            .collect();
        lines.push(&self.target_extra);
        lines.join("\n")
    }

    /// Runs the binary with `args` (after `--config`), the token in the environment.
    pub fn run(&self, args: &[&str]) -> Run {
        std::fs::write(self.config_path(), self.config_text()).expect("write config");
        let run = || {
            assert_cmd::Command::cargo_bin("socialtalent-sync")
                .expect("binary")
                .current_dir(self.dir.path())
                .env(TOKEN_VAR, &self.peer.token)
                .env_remove("RUST_LOG")
                .arg("--config")
                .arg(self.config_path())
                .args(args)
                .output()
                .expect("runs")
        };
        // Fakes served by this test's runtime must keep answering while the binary runs.
        let output = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        };
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        Run {
            code: output.status.code().unwrap_or(-1),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Starts the binary with `args` in the background (for the daemon), the token in the
    /// environment, stdout and stderr captured to files in the workspace.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.spawn_with_env(args, &[])
    }

    /// [`Workspace::spawn`] with extra environment variables (for example `NOTIFY_SOCKET` and
    /// `WATCHDOG_USEC`, as systemd sets them).
    pub fn spawn_with_env(
        &self,
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> std::process::Child {
        std::fs::write(self.config_path(), self.config_text()).expect("write config");
        let log = |name: &str| std::fs::File::create(self.dir.path().join(name)).expect("log file");
        std::process::Command::new(assert_cmd::cargo::cargo_bin("socialtalent-sync"))
            .current_dir(self.dir.path())
            .env(TOKEN_VAR, &self.peer.token)
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("RUNTIME_DIRECTORY")
            .envs(env.iter().copied())
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .stdout(log("daemon.out"))
            .stderr(log("daemon.err"))
            .spawn()
            .expect("spawn")
    }

    /// What a spawned process wrote to stderr so far.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.err")).unwrap_or_default()
    }

    /// `sync --output json`, asserting the exit code.
    pub fn sync(&self, extra: &[&str], expected_code: i32) -> Value {
        let mut args = vec!["sync", "--output", "json"];
        args.extend_from_slice(extra);
        let run = self.run(&args);
        assert_eq!(
            run.code, expected_code,
            "sync {extra:?} exited {}\nstdout: {}\nstderr: {}",
            run.code, run.stdout, run.stderr
        );
        run.json
    }
}

/// Waits (bounded) until no one holds the sled lock of the state at `state_path`: after this
/// process drops a `State`, sled's background thread can keep the lock for a moment, and a
/// child process started then would see the state as in use. It probes the lock file with
/// `flock` directly, which takes and releases it without starting sled.
pub fn wait_until_unlocked(state_path: &Path) {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(state_path.join("db").join("db")).expect("the sled db file");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // SAFETY: flock on a file descriptor this function owns; no memory is involved.
        let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if taken {
            // SAFETY: as above.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the state stayed locked"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The bundled example directory.
pub fn example_directory() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/directory.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("examples/directory.json"))
        .expect("valid JSON")
}

/// The record with `id` in a directory value.
pub fn person<'a>(directory: &'a mut Value, id: &str) -> &'a mut serde_json::Map<String, Value> {
    directory
        .as_array_mut()
        .expect("array")
        .iter_mut()
        .find(|record| record["id"] == id)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no record {id}"))
}

/// `(op, idp_id)` of every action of a report, sorted.
pub fn ops(report: &Value) -> Vec<(String, String)> {
    let mut ops: Vec<(String, String)> = report["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|action| {
            (
                action["op"].as_str().expect("op").to_owned(),
                action["idp_id"].as_str().expect("idp_id").to_owned(),
            )
        })
        .collect();
    ops.sort();
    ops
}
