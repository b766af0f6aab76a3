//! `vcbUtil`: list inventory objects (see `tools::vcbutil`).
fn main() -> std::process::ExitCode {
    vcb_cli::tools::vcbutil::main()
}
