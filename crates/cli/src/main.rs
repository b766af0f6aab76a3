//! The `vcb` command (see the vcb_cli library).
fn main() -> std::process::ExitCode {
    vcb_cli::run_vcb()
}
