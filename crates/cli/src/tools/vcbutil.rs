//! `vcbUtil`: list inventory objects of the host.
//!
//! ```text
//! vcbUtil -c vmfolders|resourcepools|datastores|ping [-h host] [-u user] [-p password] [-L level]
//! ```
//! - `vmfolders`: one VM folder path a catalog can name per line, root first
//!   (`/ha-datacenter/vm`, `/ha-datacenter/vm/Production`);
//! - `resourcepools`: one pool per line (`/ha-datacenter/host/NAME/Resources/Gold`);
//! - `datastores`: `name<TAB>folder` per line;
//! - `ping`: one line saying the host answered.

use crate::tools::conf::ToolArgs;
use anyhow::Result;
use clap::{Parser, ValueEnum};
use host::ContainerKind;
use std::process::ExitCode;

/// vcbUtil: list VM folders, resource pools or datastores, or check the connection.
#[derive(Parser, Debug)]
#[command(name = "vcbUtil", version, about, disable_help_flag = true)]
struct Args {
    /// What to do.
    #[arg(short = 'c', value_name = "COMMAND")]
    command: UtilCommand,
    #[command(flatten)]
    tool: ToolArgs,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum UtilCommand {
    /// List VM folders.
    Vmfolders,
    /// List resource pools.
    Resourcepools,
    /// List datastores with their folders.
    Datastores,
    /// Check that the host answers.
    Ping,
}

/// Entry point of the `vcbUtil` binary.
pub fn main() -> ExitCode {
    crate::output::exit_with(run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    crate::logging::init(a.tool.level);
    let host = match crate::cmd::agent::tool_target(&a.tool, &a.tool.overrides(None))? {
        crate::cmd::agent::Target::Local(host, _) => host,
        crate::cmd::agent::Target::Remote(agent, _) => return remote(&agent, a.command),
    };
    let containers = |kind| -> Vec<String> {
        host.containers(kind)
            .iter()
            .map(|p| host.config().display_container(kind, p))
            .collect()
    };
    let lines = match a.command {
        UtilCommand::Vmfolders => containers(ContainerKind::Folder),
        UtilCommand::Resourcepools => containers(ContainerKind::Pool),
        UtilCommand::Datastores => host
            .datastores()
            .into_iter()
            .map(|ds| format!("{}\t{}", ds.name, ds.path.display()))
            .collect(),
        UtilCommand::Ping => vec![format!(
            "Ping succeeded: standalone host {} at {} ({} VMs registered)",
            host.name(),
            host.root().display(),
            host.entries().len()
        )],
    };
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

/// The same lines, from a host agent.
fn remote(agent: &agent::client::Agent, command: UtilCommand) -> Result<()> {
    let lines = match command {
        UtilCommand::Vmfolders => agent.inventory()?.folders,
        UtilCommand::Resourcepools => agent.inventory()?.pools,
        UtilCommand::Datastores => agent
            .inventory()?
            .datastores
            .into_iter()
            .map(|(name, path)| format!("{name}\t{path}"))
            .collect(),
        UtilCommand::Ping => {
            let p = agent.ping()?;
            vec![format!(
                "Ping succeeded: standalone host {} at {} ({} VMs registered; agent {} as {}, role {})",
                p.host,
                p.root,
                p.vms,
                agent.endpoint(),
                p.user,
                p.role
            )]
        }
    };
    for l in lines {
        println!("{l}");
    }
    Ok(())
}
