//! Build helpers for socialtalent-sync (matklad's `cargo xtask` pattern).
//!
//! `cargo xtask assets [DIR]` writes, from the clap definitions of the command line
//! (`socialtalent_sync::cli::Cli`), so they can never disagree with it:
//! - `DIR/man/socialtalent-sync.1` and one `socialtalent-sync-<command>.1` per command;
//! - `DIR/completions/socialtalent-sync.bash`, `_socialtalent-sync` (zsh) and
//!   `socialtalent-sync.fish`.
//!
//! `DIR` defaults to `target/assets`, where `cargo deb` picks them up (see `Cargo.toml`'s
//! `[package.metadata.deb] assets`): run `cargo xtask assets` before `cargo deb`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::CommandFactory;
use clap_complete::Shell;

/// The binary's name, as the man pages and completions call it.
const BIN: &str = "socialtalent-sync";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("assets") => {
            let dir = args.get(1).map_or_else(default_dir, PathBuf::from);
            match write_assets(&dir) {
                Ok(files) => {
                    for file in files {
                        println!("{}", file.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!(
                "usage: cargo xtask assets [DIR]   (man pages and shell completions; DIR defaults to target/assets)"
            );
            ExitCode::from(2)
        }
    }
}

/// `target/assets` of the workspace.
fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("target")
        .join("assets")
}

/// Writes the man pages and completions under `dir` and returns the files written.
///
/// # Errors
/// An I/O error, with the path it concerns.
fn write_assets(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut written = Vec::new();
    let man = dir.join("man");
    let completions = dir.join("completions");
    for folder in [&man, &completions] {
        std::fs::create_dir_all(folder)
            .map_err(|error| format!("cannot create {}: {error}", folder.display()))?;
    }
    let write = |path: PathBuf, bytes: Vec<u8>, written: &mut Vec<PathBuf>| {
        std::fs::write(&path, bytes)
            .map_err(|error| format!("cannot write {}: {error}", path.display()))?;
        written.push(path);
        Ok::<(), String>(())
    };

    let mut command = socialtalent_sync::cli::Cli::command();
    command.build();
    write(
        man.join(format!("{BIN}.1")),
        man_page(&command)?,
        &mut written,
    )?;
    // `help` (added by clap) is described on the main page, not a page of its own.
    for sub in command
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
    {
        let name = format!("{BIN}-{}", sub.get_name());
        let page = sub.clone().name(name.clone()).display_name(name.clone());
        write(
            man.join(format!("{name}.1")),
            man_page(&page)?,
            &mut written,
        )?;
    }

    for (shell, file) in [
        (Shell::Bash, format!("{BIN}.bash")),
        (Shell::Zsh, format!("_{BIN}")),
        (Shell::Fish, format!("{BIN}.fish")),
    ] {
        let mut bytes = Vec::new();
        clap_complete::generate(shell, &mut command.clone(), BIN, &mut bytes);
        write(completions.join(file), bytes, &mut written)?;
    }
    Ok(written)
}

/// One man page in roff.
fn man_page(command: &clap::Command) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    clap_mangen::Man::new(command.clone())
        .section("1")
        .manual("socialtalent-sync manual")
        .source(format!(
            "socialtalent-sync {}",
            socialtalent_sync::version::text()
        ))
        .render(&mut bytes)
        .map_err(|error| {
            format!(
                "cannot render the man page of {}: {error}",
                command.get_name()
            )
        })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    /// The commands a user can type (hidden ones excluded).
    fn commands() -> Vec<String> {
        socialtalent_sync::cli::Cli::command()
            .get_subcommands()
            .filter(|sub| !sub.is_hide_set())
            .map(|sub| sub.get_name().to_owned())
            .collect()
    }

    #[test]
    fn assets_are_generated_and_name_every_command() {
        let dir = tempfile::tempdir().expect("temp dir");
        let written = write_assets(dir.path()).expect("assets");
        let commands = commands();
        assert!(
            ["sync", "run", "check-config", "preview", "status"]
                .iter()
                .all(|name| commands.iter().any(|command| command == name)),
            "{commands:?}"
        );
        // The main page, one page per command, three completions.
        assert_eq!(written.len(), 1 + commands.len() + 3, "{written:?}");

        let main_page = read(&dir.path().join("man/socialtalent-sync.1"));
        assert!(
            main_page.starts_with(".ie \\n(.g .ds Aq"),
            "roff: {main_page}"
        );
        assert!(main_page.contains(".TH socialtalent-sync 1"), "{main_page}");
        for command in &commands {
            assert!(
                main_page.contains(&format!(
                    "socialtalent\\-sync\\-{}",
                    command.replace('-', "\\-")
                )) || main_page.contains(&format!("\n{}\n", command.replace('-', "\\-"))),
                "the main man page does not list {command}:\n{main_page}"
            );
            let page = read(
                &dir.path()
                    .join(format!("man/socialtalent-sync-{command}.1")),
            );
            assert!(
                page.contains(&format!(".TH socialtalent-sync-{command} 1")),
                "{command}: {page}"
            );
        }
        let sync = read(&dir.path().join("man/socialtalent-sync-sync.1"));
        assert!(
            !sync.contains("dump"),
            "the hidden --dump stays out of the man page"
        );
        let preview = read(&dir.path().join("man/socialtalent-sync-preview.1"));
        assert!(preview.contains("\\-\\-apply"), "{preview}");
        assert!(preview.contains("USER"), "{preview}");

        let bash = read(&dir.path().join("completions/socialtalent-sync.bash"));
        let zsh = read(&dir.path().join("completions/_socialtalent-sync"));
        let fish = read(&dir.path().join("completions/socialtalent-sync.fish"));
        assert!(bash.contains("complete -F _socialtalent__sync"), "{bash}");
        assert!(zsh.starts_with("#compdef socialtalent-sync"), "{zsh}");
        assert!(fish.contains("complete -c socialtalent-sync"), "{fish}");
        for command in &commands {
            for (shell, text) in [("bash", &bash), ("zsh", &zsh), ("fish", &fish)] {
                assert!(text.contains(command.as_str()), "{shell} misses {command}");
            }
        }
        assert!(fish.contains("dry-run"), "{fish}");
    }
}
