//! `vcbSnapAll`: back up a group of VMs (see `tools::vcbsnapall`).
fn main() -> std::process::ExitCode {
    vcb_cli::tools::vcbsnapall::main()
}
