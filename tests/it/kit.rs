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
