//! `vcbRestore`: restore a VM from a backup folder, over `vcb restore`'s code.
//!
//! ```text
//! vcbRestore -s <backup directory | file://...> [-a <alternate catalog>]
//!            [-l prompt|overwrite|keep|abort] [-b ...] [-i key] [--accept-new-host-key]
//!            [--allow-rdm] [--power-off] [--wait]
//!            [-h -u -p -L]
//! ```

use crate::cmd::backup::RemoteArgs;
use crate::cmd::backup::{render::Render, run_restore};
use crate::tools::conf::ToolArgs;
use anyhow::{bail, Result};
use backup::ConflictPolicy;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// vcbRestore: restore a VM where it was, or elsewhere through an edited catalog.
#[derive(Parser, Debug)]
#[command(name = "vcbRestore", version, disable_help_flag = true)]
struct Args {
    /// The backup: a folder, file:///path or scp://[user@]host[:port]:/path (downloaded to a
    /// temporary folder under TEMPDIR first), or repo:REPO#POINT.
    #[arg(short = 's', value_name = "SOURCE")]
    src: String,
    /// An edited copy of the backup's catalog (datastore paths, folder, resource pool).
    #[arg(short = 'a', value_name = "CATALOG")]
    catalog: Option<PathBuf>,
    /// When a file exists or the VM is registered: prompt (default), overwrite, keep, abort.
    #[arg(short = 'l', value_name = "POLICY")]
    policy: Option<ConflictPolicy>,
    /// Synonym of -l (VCB accepted it).
    #[arg(short = 'b', value_name = "POLICY", conflicts_with = "policy")]
    policy_b: Option<ConflictPolicy>,
    /// Provisioning of the restored disks instead of the recorded one.
    #[arg(long, value_name = "FORMAT")]
    disk_format: Option<String>,
    #[command(flatten)]
    safety: crate::cmd::backup::RestoreSafety,
    #[command(flatten)]
    tool: ToolArgs,
    /// SSH key (-i KEY, $VCB_SSH_KEY) and host-key policy for scp:// destinations.
    #[command(flatten)]
    remote: RemoteArgs,
}

/// Entry point of the `vcbRestore` binary.
pub fn main() -> ExitCode {
    crate::output::exit_with(run(Args::parse()))
}

fn run(a: Args) -> Result<()> {
    crate::logging::init(a.tool.level);
    if a.src.is_empty() {
        bail!("-s <backup directory> is required");
    }
    let policy = a.policy.or(a.policy_b).unwrap_or_default();
    let opts = a
        .safety
        .options(a.catalog.as_deref(), policy, a.disk_format.as_deref())?;
    let (mut host, conf) = match crate::cmd::agent::tool_target(&a.tool, &a.tool.overrides(None))? {
        crate::cmd::agent::Target::Local(host, conf) => (host, conf),
        crate::cmd::agent::Target::Remote(agent, conf) => {
            let remote = a.remote.options(&conf);
            return crate::cmd::backup::run_proxy_restore(
                &agent,
                a.tool.certs.transport,
                &a.src,
                &remote,
                &opts,
                &mut Render::new(a.tool.level),
            );
        }
    };
    let remote = a.remote.options(&conf);
    run_restore(
        &mut host,
        &a.src,
        &a.remote,
        &remote,
        &opts,
        &mut Render::new(a.tool.level),
    )
}
