//! The `vcb` command and the VMware-compatible tools (`vmkfstools`, `vcbMounter`,
//! `vcbRestore`, `vcbSnapAll`, `vcbVmName`, `vcbUtil`): argument parsing, output and
//! progress rendering over the library crates. No storage logic lives here.

pub mod cmd;
pub mod logging;
pub mod output;
pub mod signals;
pub mod tools;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// vcb: VMware-style consolidated backup and restore.
#[derive(Parser, Debug)]
#[command(name = "vcb", version, about, propagate_version = true)]
pub struct Cli {
    /// The host's root folder for every command (as each command's own --root).
    #[arg(long, value_name = "DIR")]
    root: Option<std::path::PathBuf>,
    /// Log level 0..6: 4-6 add the libraries' diagnostics (info, debug, trace).
    #[arg(short = 'L', value_name = "LEVEL", default_value_t = 3, value_parser = clap::value_parser!(u8).range(0..=6))]
    level: u8,
    /// A host agent to run backup and restore against (--host URL --user NAME ...).
    #[command(flatten)]
    agent: cmd::agent::GlobalHost,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Virtual disk operations (the twin of vmkfstools).
    #[command(subcommand)]
    Disk(cmd::disk::DiskCmd),
    /// Back up a whole VM into a new folder (the twin of vcbMounter -t fullvm).
    Backup(cmd::backup::BackupArgs),
    /// Restore a VM from a backup folder (the twin of vcbRestore).
    Restore(cmd::backup::RestoreArgs),
    /// Back up and restore a demo VM on a throw-away host, in seconds.
    Demo(cmd::backup::DemoArgs),
    /// The standalone host: create it, show it, back up its configuration.
    Host(cmd::host::HostArgs),
    /// Datastores: folders holding VM folders.
    Datastore(cmd::datastore::DatastoreArgs),
    /// VM folders of the inventory.
    Folder(cmd::folder::ContainerArgs),
    /// Resource pools of the inventory.
    Pool(cmd::folder::ContainerArgs),
    /// Virtual machines: create, register, list, snapshots, power (run under QEMU).
    Vm(cmd::vm::VmArgs),
    /// The deduplicating, encrypted backup repository.
    Repo(cmd::repo::RepoArgs),
    /// Browse, mount and restore single files from any backup (folder or repository point).
    Files(cmd::files::FilesArgs),
    /// The host agent: the HTTPS API and NBD server backup proxies use.
    Hostd(cmd::agent::HostdArgs),
}

/// Entry point of the `vcb` binary.
pub fn run_vcb() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.level);
    if let Some(root) = cli.root {
        cmd::backup::set_default_root(root);
    }
    cmd::agent::set_global_host(cli.agent);
    let result = match cli.command {
        Command::Backup(_) | Command::Restore(_) => Ok(()),
        _ if cmd::agent::has_global_host() => Err(anyhow::anyhow!(
            "--host: only `vcb backup` and `vcb restore` run through a host agent; run this command on the host"
        )),
        _ => Ok(()),
    }
    .and_then(|()| match cli.command {
        Command::Disk(c) => cmd::disk::run(c),
        Command::Backup(a) => cmd::backup::backup(a),
        Command::Restore(a) => cmd::backup::restore(a),
        Command::Demo(a) => cmd::backup::demo(a),
        Command::Host(a) => cmd::host::run(a),
        Command::Datastore(a) => cmd::datastore::run(a),
        Command::Folder(a) => cmd::folder::run(host::ContainerKind::Folder, a),
        Command::Pool(a) => cmd::folder::run(host::ContainerKind::Pool, a),
        Command::Vm(a) => cmd::vm::run(a),
        Command::Repo(a) => cmd::repo::run(a),
        Command::Files(a) => cmd::files::run(a),
        Command::Hostd(a) => cmd::agent::hostd(a),
    });
    output::exit_with(result)
}
