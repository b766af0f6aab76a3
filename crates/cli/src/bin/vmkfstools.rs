//! The `vmkfstools` command (see the vcb_cli library).
fn main() -> std::process::ExitCode {
    vcb_cli::tools::vmkfstools::main()
}
