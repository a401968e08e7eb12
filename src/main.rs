//! The `socialtalent-sync` binary: everything lives in the library; see `cli::main`.

fn main() -> std::process::ExitCode {
    socialtalent_sync::cli::main()
}
