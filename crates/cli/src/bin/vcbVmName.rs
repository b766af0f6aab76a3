//! `vcbVmName`: find VMs by specifier (see `tools::vcbvmname`).
fn main() -> std::process::ExitCode {
    vcb_cli::tools::vcbvmname::main()
}
