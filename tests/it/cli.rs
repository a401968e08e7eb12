//! The binary as an administrator runs it (SPEC §3): the README's first command, exit codes,
//! messages, `check-config`, `preview`, `status` and `--log-format`. Each test runs the real
//! binary in its own temporary directory holding a copy of `examples/`, with the environment
//! variables the program reads removed unless the test sets them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use assert_cmd::Command;
use serde_json::Value;

const EXTENSION_URN: &str = "urn:ietf:params:scim:schemas:extension:socialtalent:2.0:User";
const SECRET: &str = "sekret-XYZZY-123";
const SKIP_ERROR: &str = "coreTeam is empty; it is mandatory on create";
/// The default state directory, relative to the current directory, when `[state]` is absent and
/// `$STATE_DIRECTORY` is unset.
const DEFAULT_STATE_DIR: &str = "socialtalent-sync-state";

/// A temporary working directory holding a copy of the repository's `examples/`.
struct Sandbox {
    dir: tempfile::TempDir,
}

/// What one run of the binary produced.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|error| unreachable!("stdout is not JSON ({error}):\n{}", self.stdout))
    }

    fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout:\n{}\n--- stderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    fn mentions(&self, text: &str) -> bool {
        self.stdout.contains(text) || self.stderr.contains(text)
    }
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        std::fs::create_dir(dir.path().join("examples")).expect("create examples/");
        for entry in std::fs::read_dir(&examples).expect("examples/ exists") {
            let entry = entry.expect("a directory entry");
            std::fs::copy(
                entry.path(),
                dir.path().join("examples").join(entry.file_name()),
            )
            .expect("copy an example file");
        }
        Sandbox { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The binary, run in the sandbox, with the variables the program reads removed.
    fn command(&self) -> Command {
        let mut command = Command::cargo_bin("socialtalent-sync").expect("the binary is built");
        command
            .current_dir(self.path())
            .env_remove("SOCIALTALENT_SCIM_TOKEN")
            .env_remove("SOCIALTALENT_SYNC_CONFIG")
            .env_remove("STATE_DIRECTORY")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("RUST_LOG");
        command
    }

    fn run(&self, args: &[&str]) -> Run {
        run(self.command().args(args))
    }

    /// Writes a file into the sandbox and returns its path.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).expect("write a file");
        path
    }

    /// The example configuration with `from` replaced by `to`, written as `name`.
    fn example_with(&self, name: &str, from: &str, to: &str) -> PathBuf {
        let text = std::fs::read_to_string(self.path().join("examples/config.toml"))
            .expect("read the example");
        assert!(text.contains(from), "the example has no {from:?}");
        self.write(&format!("examples/{name}"), &text.replace(from, to))
    }

    /// The names in the sandbox's top directory, sorted.
    fn top_level(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path())
            .expect("read the sandbox")
            .map(|entry| {
                entry
                    .expect("a directory entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }

    /// Asserts that no state directory was created, neither in the working directory nor next
    /// to the configuration.
    fn assert_no_state(&self) {
        assert_eq!(self.top_level(), ["examples"], "something was created");
        assert!(
            !self
                .path()
                .join("examples")
                .join(DEFAULT_STATE_DIR)
                .exists()
        );
    }
}

fn run(command: &mut Command) -> Run {
    let output = command.output().expect("the binary runs");
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).expect("stdout is UTF-8"),
        stderr: String::from_utf8(output.stderr).expect("stderr is UTF-8"),
    }
}

/// A listening socket that nobody should connect to, and a check that nobody did.
struct Tripwire {
    listener: TcpListener,
}

impl Tripwire {
    fn new() -> Tripwire {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        listener.set_nonblocking(true).expect("non-blocking");
        Tripwire { listener }
    }

    fn base_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/v2",
            self.listener.local_addr().expect("an address").port()
        )
    }

    fn assert_untouched(&self) {
        match self.listener.accept() {
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => unreachable!("accept failed: {error}"),
            Ok((_, peer)) => unreachable!("{peer} connected to the target"),
        }
    }
}

// ─── The README's first command ──────────────────────────────────────────────────────────────

#[test]
fn readme_dry_run_prints_the_json_report() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&[
        "--config",
        "examples/config.toml",
        "sync",
        "--dry-run",
        "--output",
        "json",
    ]);
    run.expect_code(0);
    let report = run.json();
    assert_eq!(report["mode"], "dry-run");
    assert_eq!(report["source"]["kind"], "file");
    assert_eq!(report["source"]["users_read"], 25);
    assert_eq!(report["source"]["in_scope"], 22);
    assert_eq!(report["source"]["full"], true);
    let summary = &report["summary"];
    assert_eq!(summary["create"], 21);
    assert_eq!(summary["skipped"], 1);
    for zero in [
        "adopted",
        "update",
        "deactivate",
        "reactivate",
        "unchanged",
        "held",
        "failed",
        "drift_repaired",
        "orphans",
        "writebacks",
    ] {
        assert_eq!(summary[zero], 0, "summary.{zero}");
    }

    let actions = report["actions"].as_array().expect("actions is an array");
    assert_eq!(actions.len(), 22);
    let skips: Vec<&Value> = actions.iter().filter(|a| a["op"] == "skip").collect();
    assert_eq!(skips.len(), 1);
    assert_eq!(skips[0]["idp_id"], "E1024");
    assert_eq!(skips[0]["userName"], "noor.rahman@northwind.example");
    assert_eq!(skips[0]["error"], SKIP_ERROR);
    let creates: Vec<&Value> = actions.iter().filter(|a| a["op"] == "create").collect();
    assert_eq!(creates.len(), 21);
    for create in &creates {
        let payload = &create["payload"];
        assert_eq!(payload["userName"], create["userName"]);
        assert_eq!(payload["externalId"], create["idp_id"]);
        assert_eq!(payload["active"], true);
        assert!(
            payload["schemas"]
                .as_array()
                .is_some_and(|schemas| schemas.iter().any(|s| s == EXTENSION_URN)),
            "{payload}"
        );
        let extension = &payload[EXTENSION_URN];
        assert!(extension["coreTeam"].is_string(), "{payload}");
        assert!(
            ["user", "advisor", "company_admin"]
                .contains(&extension["role"].as_str().unwrap_or_default()),
            "{payload}"
        );
    }
    // The SPEC's example user, mapped from the bundled directory.
    let zoe = creates
        .iter()
        .find(|a| a["idp_id"] == "E1007")
        .expect("E1007 is created");
    let payload = &zoe["payload"];
    assert_eq!(payload["userName"], "zoe.odegard@northwind.example");
    assert_eq!(payload["name"]["givenName"], "Zoë");
    assert_eq!(payload["name"]["familyName"], "Ødegård");
    assert_eq!(payload["title"], "Recruiter");
    assert_eq!(
        payload["emails"][0],
        serde_json::json!({"value": "zoe.odegard@northwind.example", "type": "work", "primary": true})
    );
    let extension = &payload[EXTENSION_URN];
    assert_eq!(extension["coreTeam"], "Sales");
    assert_eq!(extension["role"], "advisor");
    assert_eq!(extension["reportsTo"], "ana.li@northwind.example");
    assert_eq!(
        extension["learningPaths"],
        serde_json::json!(["Onboarding"])
    );
    assert_eq!(
        extension["teamsToManage"],
        serde_json::json!(["Sales EMEA"])
    );
    assert_eq!(extension["udf_Customer_ID"], "C-1042");
    // Managers are created before the people who report to them.
    let position = |id: &str| {
        creates
            .iter()
            .position(|a| a["idp_id"] == id)
            .expect("created")
    };
    assert!(position("E1002") < position("E1007"));

    // It needed no token and wrote nothing: no state directory anywhere.
    assert!(!run.mentions("SOCIALTALENT_SCIM_TOKEN"));
    sandbox.assert_no_state();
}

#[test]
fn readme_dry_run_prints_the_text_plan() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&[
        "--config",
        "examples/config.toml",
        "sync",
        "--dry-run",
        "--output",
        "text",
    ]);
    run.expect_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    let creates = lines
        .iter()
        .filter(|line| line.trim_start().starts_with("+ create"))
        .count();
    assert_eq!(creates, 21, "{}", run.stdout);
    assert!(
        lines
            .iter()
            .any(|line| line.contains("+ create") && line.contains("zoe.odegard@northwind.example")),
        "{}",
        run.stdout
    );
    assert!(
        lines.iter().any(|line| line.contains("skip")
            && line.contains("noor.rahman@northwind.example")
            && line.contains(SKIP_ERROR)),
        "{}",
        run.stdout
    );
    let last = lines
        .iter()
        .rev()
        .find(|line| !line.trim().is_empty())
        .expect("some output");
    assert!(last.starts_with("Plan: 21 to create"), "{last}");
    assert!(last.contains("1 skipped"), "{last}");
    sandbox.assert_no_state();
}

#[test]
fn report_is_json_when_stdout_is_not_a_terminal() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&["--config", "examples/config.toml", "sync", "--dry-run"]);
    run.expect_code(0);
    assert_eq!(run.json()["summary"]["create"], 21);
}

#[test]
fn dry_run_contacts_nothing() {
    let sandbox = Sandbox::new();
    let tripwire = Tripwire::new();
    let config = sandbox.example_with(
        "tripwire.toml",
        "http://127.0.0.1:18080/v2",
        &tripwire.base_url(),
    );
    let config = config.to_str().expect("UTF-8 path");
    sandbox
        .run(&["--config", config, "sync", "--dry-run", "--output", "json"])
        .expect_code(0);
    sandbox
        .run(&["--config", config, "preview", "E1007"])
        .expect_code(0);
    sandbox.run(&["--config", config, "status"]).expect_code(0);
    tripwire.assert_untouched();
}

#[test]
fn source_file_is_found_next_to_the_configuration() {
    // Run from an unrelated directory with an absolute --config: the export is looked up next to
    // the configuration file, not in the working directory.
    let sandbox = Sandbox::new();
    let elsewhere = tempfile::tempdir().expect("a temporary directory");
    let config = sandbox.path().join("examples/config.toml");
    let run = run(sandbox
        .command()
        .current_dir(elsewhere.path())
        .arg("--config")
        .arg(&config)
        .args(["sync", "--dry-run", "--output", "json"]));
    run.expect_code(0);
    assert_eq!(run.json()["source"]["users_read"], 25);
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).expect("read").count(),
        0,
        "the dry run created something in the working directory"
    );
}

// ─── Bad usage and configuration: exit code 2 ────────────────────────────────────────────────

#[test]
fn missing_configuration_file() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&["--config", "no-such-dir/config.toml", "status"]);
    run.expect_code(2);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains("no-such-dir/config.toml"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("cannot read the configuration"),
        "{}",
        run.stderr
    );
    sandbox.assert_no_state();
}

#[test]
fn unknown_key_names_file_key_and_line() {
    let sandbox = Sandbox::new();
    let config = sandbox.example_with(
        "typo.toml",
        "\nread_back = false\n",
        "\nread_back = false\nreadback = true\n",
    );
    let run = run(sandbox.command().arg("--config").arg(&config).arg("status"));
    run.expect_code(2);
    let text = std::fs::read_to_string(&config).expect("read");
    let line = text
        .lines()
        .position(|line| line.starts_with("readback"))
        .expect("the typo")
        + 1;
    assert!(run.stderr.contains("typo.toml"), "{}", run.stderr);
    assert!(run.stderr.contains("reconcile.readback"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("line {line}, column 1")),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("unknown field"), "{}", run.stderr);
    sandbox.assert_no_state();
}

#[test]
fn bad_template_names_the_attribute() {
    let sandbox = Sandbox::new();
    let config = sandbox.example_with(
        "template.toml",
        "title = \"{{ user.title }}\"",
        "title = \"{{ user.title \"",
    );
    let run = run(sandbox
        .command()
        .arg("--config")
        .arg(&config)
        .args(["sync", "--dry-run"]));
    run.expect_code(2);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(run.stderr.contains("template.toml"), "{}", run.stderr);
    assert!(run.stderr.contains("mapping.title"), "{}", run.stderr);
    assert!(
        run.stderr.contains("template does not compile"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("(line "), "{}", run.stderr);
}

#[test]
fn clap_usage_errors_exit_2() {
    let sandbox = Sandbox::new();
    for (args, expected) in [
        (
            &["--config", "examples/config.toml", "frobnicate"][..],
            "frobnicate",
        ),
        (
            &["--config", "examples/config.toml", "sync", "--dry-runn"][..],
            "--dry-runn",
        ),
        (
            &[
                "--config",
                "examples/config.toml",
                "sync",
                "--output",
                "yaml",
            ][..],
            "yaml",
        ),
        (
            &[
                "--config",
                "examples/config.toml",
                "--log-format",
                "xml",
                "status",
            ][..],
            "xml",
        ),
        (&["--config", "examples/config.toml", "preview"][..], "USER"),
        (&["--config", "examples/config.toml"][..], "Usage"),
        (
            &["-v", "-q", "--config", "examples/config.toml", "status"][..],
            "-q",
        ),
    ] {
        let run = sandbox.run(args);
        run.expect_code(2);
        assert!(run.stderr.contains(expected), "{args:?}: {}", run.stderr);
    }
    sandbox.assert_no_state();
}

#[test]
fn sync_without_dry_run_needs_the_token() {
    let sandbox = Sandbox::new();
    let tripwire = Tripwire::new();
    let config = sandbox.example_with(
        "tripwire.toml",
        "http://127.0.0.1:18080/v2",
        &tripwire.base_url(),
    );
    let run = run(sandbox
        .command()
        .arg("--config")
        .arg(&config)
        .args(["sync", "--output", "json"]));
    run.expect_code(2);
    assert!(run.stderr.contains("target.token"), "{}", run.stderr);
    assert!(
        run.stderr.contains("SOCIALTALENT_SCIM_TOKEN"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.is_empty(),
        "no report on a run that did not start: {}",
        run.stdout
    );
    tripwire.assert_untouched();
}

#[test]
fn a_hand_run_sync_does_not_start_an_empty_state_where_the_configuration_names_none() {
    // The example names no `[state] path` and `$STATE_DIRECTORY` is unset: the fallback
    // ./socialtalent-sync-state does not exist, so a sync would start an empty state and take
    // every SocialTalent account for new. It refuses, before contacting anything.
    let sandbox = Sandbox::new();
    let tripwire = Tripwire::new();
    let config = sandbox.example_with(
        "tripwire.toml",
        "http://127.0.0.1:18080/v2",
        &tripwire.base_url(),
    );
    for args in [
        &["sync", "--output", "json"][..],
        &["sync", "--allow-deactivations", "--output", "json"][..],
        &["run"][..],
        &["preview", "E1001", "--apply"][..],
    ] {
        let run = run(sandbox
            .command()
            .env("SOCIALTALENT_SCIM_TOKEN", SECRET)
            .arg("--config")
            .arg(&config)
            .args(args));
        run.expect_code(2);
        assert!(
            run.stderr.contains("--new-state"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains(DEFAULT_STATE_DIR) && run.stderr.contains("[state] path"),
            "{args:?}: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
        sandbox.assert_no_state();
        tripwire.assert_untouched();
    }
    // Approving never starts a state: without one, nothing is held.
    let approve = run(sandbox
        .command()
        .env("SOCIALTALENT_SCIM_TOKEN", SECRET)
        .arg("--config")
        .arg(&config)
        .args(["approve", "--output", "json"]));
    approve.expect_code(2);
    assert!(
        approve.stderr.contains("nothing is held"),
        "{}",
        approve.stderr
    );
    sandbox.assert_no_state();
    // A dry run creates nothing and needs no flag (the README's first command).
    let dry = sandbox.run(&[
        "--config",
        "examples/config.toml",
        "sync",
        "--dry-run",
        "--output",
        "json",
    ]);
    dry.expect_code(0);
    sandbox.assert_no_state();
    // With the flag, the state is started where asked (the run then fails at once on a target
    // that refuses connections).
    let refused = sandbox.example_with(
        "refused.toml",
        "base_url = \"http://127.0.0.1:18080/v2\"",
        "base_url = \"http://127.0.0.1:9/v2\"\nmax_retries = 0",
    );
    let started = run(sandbox
        .command()
        .env("SOCIALTALENT_SCIM_TOKEN", SECRET)
        .arg("--config")
        .arg(&refused)
        .args(["sync", "--new-state", "--output", "json"]));
    assert!(
        !started.stderr.contains("--new-state"),
        "{}",
        started.stderr
    );
    assert!(sandbox.path().join(DEFAULT_STATE_DIR).join("db").exists());
}

#[test]
fn config_path_from_the_environment() {
    let sandbox = Sandbox::new();
    let config = sandbox.path().join("examples/config.toml");
    // $SOCIALTALENT_SYNC_CONFIG is used when --config is absent.
    let run_env = run(sandbox
        .command()
        .env("SOCIALTALENT_SYNC_CONFIG", &config)
        .env("SOCIALTALENT_SCIM_TOKEN", SECRET)
        .arg("check-config"));
    run_env.expect_code(0);
    assert!(
        run_env
            .stdout
            .contains(&format!("configuration {}: valid", config.display())),
        "{}",
        run_env.stdout
    );
    // --config wins over it.
    let run_flag = run(sandbox
        .command()
        .env(
            "SOCIALTALENT_SYNC_CONFIG",
            sandbox.path().join("missing.toml"),
        )
        .env("SOCIALTALENT_SCIM_TOKEN", SECRET)
        .args(["--config", "examples/config.toml", "check-config"]));
    run_flag.expect_code(0);
    // A missing file named by the variable is reported with its path.
    let run_missing = run(sandbox
        .command()
        .env(
            "SOCIALTALENT_SYNC_CONFIG",
            sandbox.path().join("missing.toml"),
        )
        .arg("status"));
    run_missing.expect_code(2);
    assert!(
        run_missing.stderr.contains("missing.toml"),
        "{}",
        run_missing.stderr
    );
}

// ─── check-config ───────────────────────────────────────────────────────────────────────────

#[test]
fn check_config_reports_a_missing_secret() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&["--config", "examples/config.toml", "check-config"]);
    run.expect_code(2);
    let line = run
        .stdout
        .lines()
        .find(|line| line.contains("secret target.token"))
        .unwrap_or_else(|| unreachable!("no secret line in {}", run.stdout));
    assert!(line.contains("MISSING"), "{line}");
    assert!(line.contains("SOCIALTALENT_SCIM_TOKEN"), "{line}");
    assert!(run.stderr.contains("1 problem"), "{}", run.stderr);
    assert!(run.stdout.contains("udf_Customer_ID"), "{}", run.stdout);
    sandbox.assert_no_state();
}

#[test]
fn check_config_with_the_secret_set_never_prints_it() {
    let sandbox = Sandbox::new();
    let run = run(sandbox
        .command()
        .env("SOCIALTALENT_SCIM_TOKEN", SECRET)
        .args(["--config", "examples/config.toml", "check-config"]));
    run.expect_code(0);
    assert!(
        run.stdout.contains("secret target.token: present"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("MISSING"), "{}", run.stdout);
    assert!(!run.mentions(SECRET), "the secret was printed");
    assert!(!run.mentions("XYZZY"), "part of the secret was printed");
    sandbox.assert_no_state();
}

#[test]
fn inline_secret_is_warned_about_and_never_printed() {
    let sandbox = Sandbox::new();
    let config = sandbox.example_with("inline.toml", "${SOCIALTALENT_SCIM_TOKEN}", SECRET);
    for args in [
        &["check-config"][..],
        &["sync", "--dry-run", "--output", "json"][..],
        &["sync", "--dry-run", "--output", "text"][..],
        &["preview", "E1007"][..],
        &["-v", "status"][..],
    ] {
        let run = run(sandbox.command().arg("--config").arg(&config).args(args));
        run.expect_code(0);
        assert!(!run.mentions("XYZZY"), "{args:?} printed the secret");
        assert!(
            run.stderr.contains("inline") && run.stderr.contains("target.token"),
            "{args:?}: no warning about the inline secret: {}",
            run.stderr
        );
    }
}

#[test]
fn secret_file_from_credentials_directory() {
    let sandbox = Sandbox::new();
    let credentials = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(credentials.path().join("scim-token"), format!("{SECRET}\n"))
        .expect("write the credential");
    let config = sandbox.example_with(
        "credential.toml",
        "token = \"${SOCIALTALENT_SCIM_TOKEN}\"",
        "token_file = \"scim-token\"",
    );
    let with_credentials = run(sandbox
        .command()
        .env("CREDENTIALS_DIRECTORY", credentials.path())
        .arg("--config")
        .arg(&config)
        .arg("check-config"));
    with_credentials.expect_code(0);
    assert!(!with_credentials.mentions(SECRET));
    // Without $CREDENTIALS_DIRECTORY it is looked up next to the configuration, and is missing.
    let without = run(sandbox
        .command()
        .arg("--config")
        .arg(&config)
        .arg("check-config"));
    without.expect_code(2);
    assert!(without.stdout.contains("MISSING"), "{}", without.stdout);
    assert!(
        without.stdout.contains("target.token_file"),
        "{}",
        without.stdout
    );
}

// ─── preview ────────────────────────────────────────────────────────────────────────────────

#[test]
fn preview_by_id_shows_scope_document_and_action() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&["--config", "examples/config.toml", "preview", "E1007"]);
    run.expect_code(0);
    let out = &run.stdout;
    assert!(out.contains("Scope: in scope"), "{out}");
    assert!(out.contains("\"givenName\": \"Zoë\""), "{out}");
    assert!(out.contains("Mapped SCIM document"), "{out}");
    assert!(out.contains(&format!("\"{EXTENSION_URN}\": {{")), "{out}");
    assert!(out.contains("\"coreTeam\": \"Sales\""), "{out}");
    assert!(out.contains("Action: Create"), "{out}");
    sandbox.assert_no_state();
}

#[test]
fn preview_by_email_is_case_insensitive() {
    let sandbox = Sandbox::new();
    let by_email = sandbox.run(&[
        "--config",
        "examples/config.toml",
        "preview",
        "ZOE.ODEGARD@Northwind.Example",
        "--output",
        "json",
    ]);
    by_email.expect_code(0);
    let preview = by_email.json();
    assert_eq!(preview["scope"], "in scope");
    assert_eq!(preview["user"]["id"], "E1007");
    assert_eq!(preview["payload"][EXTENSION_URN]["coreTeam"], "Sales");
    assert_eq!(
        preview["payload"]["userName"],
        "zoe.odegard@northwind.example"
    );
    assert_eq!(preview["action"]["op"], "create");
    assert!(preview["mapping_error"].is_null());
    // The same document as by id.
    let by_id = sandbox.run(&[
        "--config",
        "examples/config.toml",
        "preview",
        "E1007",
        "--output",
        "json",
    ]);
    by_id.expect_code(0);
    assert_eq!(by_id.json(), preview);
}

#[test]
fn preview_explains_users_who_are_not_created() {
    let sandbox = Sandbox::new();
    let preview = |user: &str| {
        let run = sandbox.run(&[
            "--config",
            "examples/config.toml",
            "preview",
            user,
            "--output",
            "json",
        ]);
        run.expect_code(0);
        run.json()
    };
    let outside = preview("ingrid.bauer@northwind.example");
    assert_eq!(outside["scope"], "not provisioned: outside [scope] when");
    assert!(outside["payload"].is_null());
    let leaver = preview("E1023");
    assert_eq!(leaver["scope"], "not provisioned: inactive in the source");
    let skipped = preview("E1024");
    assert_eq!(skipped["action"]["op"], "skip");
    assert_eq!(skipped["action"]["error"], SKIP_ERROR);
}

#[test]
fn preview_of_an_unknown_user_fails() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&[
        "--config",
        "examples/config.toml",
        "preview",
        "nobody@nowhere",
    ]);
    run.expect_code(1);
    assert!(run.stderr.contains("nobody@nowhere"), "{}", run.stderr);
    assert!(run.stderr.contains("no user"), "{}", run.stderr);
    sandbox.assert_no_state();
}

// ─── status ─────────────────────────────────────────────────────────────────────────────────

#[test]
fn status_without_state() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&["--config", "examples/config.toml", "status"]);
    run.expect_code(0);
    assert!(run.stdout.contains("No state yet"), "{}", run.stdout);
    assert!(run.stdout.contains(DEFAULT_STATE_DIR), "{}", run.stdout);
    let json = sandbox.run(&[
        "--config",
        "examples/config.toml",
        "status",
        "--output",
        "json",
    ]);
    json.expect_code(0);
    assert_eq!(json.json()["initialised"], false);
    sandbox.assert_no_state();
}

#[test]
fn status_uses_state_directory_from_systemd() {
    let sandbox = Sandbox::new();
    let state = sandbox.path().join("examples").join("systemd-state");
    let run = run(sandbox.command().env("STATE_DIRECTORY", &state).args([
        "--config",
        "examples/config.toml",
        "status",
        "--output",
        "json",
    ]));
    run.expect_code(0);
    assert_eq!(run.json()["state"], state.to_str().expect("UTF-8 path"));
    assert!(!state.exists());
}

// ─── Logging ────────────────────────────────────────────────────────────────────────────────

fn json_log_lines(stderr: &str) -> Vec<Value> {
    stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| unreachable!("not a JSON log line ({error}): {line}"))
        })
        .collect()
}

#[test]
fn log_format_json_writes_json_lines() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&[
        "--config",
        "examples/config.toml",
        "--log-format",
        "json",
        "sync",
        "--dry-run",
        "--output",
        "json",
    ]);
    run.expect_code(0);
    let lines = json_log_lines(&run.stderr);
    let finished = lines
        .iter()
        .find(|line| line["message"] == "Sync finished.")
        .unwrap_or_else(|| unreachable!("no summary line in {}", run.stderr));
    assert_eq!(finished["level"], "INFO");
    assert_eq!(finished["create"], 21);
    assert!(finished["timestamp"].is_string());
    // The report on stdout is unaffected.
    assert_eq!(run.json()["summary"]["create"], 21);
}

#[test]
fn log_format_from_the_configuration_and_the_flag_overrides_it() {
    let sandbox = Sandbox::new();
    let config = sandbox.example_with(
        "json-logs.toml",
        "[reconcile]",
        "[observability]\nlog_format = \"json\"\n\n[reconcile]",
    );
    let from_config = run(sandbox.command().arg("--config").arg(&config).args([
        "sync",
        "--dry-run",
        "--output",
        "json",
    ]));
    from_config.expect_code(0);
    assert!(!json_log_lines(&from_config.stderr).is_empty());
    let overridden = run(sandbox.command().arg("--config").arg(&config).args([
        "--log-format",
        "text",
        "sync",
        "--dry-run",
        "--output",
        "json",
    ]));
    overridden.expect_code(0);
    assert!(
        overridden.stderr.contains("Sync finished."),
        "{}",
        overridden.stderr
    );
    assert!(
        overridden
            .stderr
            .lines()
            .all(|line| serde_json::from_str::<Value>(line).is_err()),
        "{}",
        overridden.stderr
    );
}

#[test]
fn quiet_drops_info_lines() {
    let sandbox = Sandbox::new();
    let run = sandbox.run(&[
        "-q",
        "--config",
        "examples/config.toml",
        "sync",
        "--dry-run",
        "--output",
        "json",
    ]);
    run.expect_code(0);
    assert!(!run.stderr.contains("Sync finished."), "{}", run.stderr);
}
