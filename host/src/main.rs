//! The `oh-host` binary; everything happens in `oh_host::cli`.

fn main() -> std::process::ExitCode {
    oh_host::cli::main()
}
