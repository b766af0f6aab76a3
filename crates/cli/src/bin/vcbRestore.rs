//! `vcbRestore`: restore a VM from a backup (see `tools::vcbrestore`).
fn main() -> std::process::ExitCode {
    vcb_cli::tools::vcbrestore::main()
}
