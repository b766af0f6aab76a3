//! `vcbMounter`: back up one VM (see `tools::vcbmounter`).
fn main() -> std::process::ExitCode {
    vcb_cli::tools::vcbmounter::main()
}
