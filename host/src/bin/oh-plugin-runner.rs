//! The `oh-plugin-runner` binary: one isolated plugin instance (`oh_host::isolation::runner`).

fn main() -> std::process::ExitCode {
    oh_host::isolation::runner::main()
}
