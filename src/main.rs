//! The `socialtalent-sync` binary: everything lives in the library; see `cli::main`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    socialtalent_sync::cli::main()
}
