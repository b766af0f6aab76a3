//! `vcb hostd` (the host agent), `vcb host cert` and `vcb host user ...`, and the
//! proxy side: logging in to an agent for the tools (`VCHOST`, `-h`, `vcb --host`).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `vcb hostd`.
#[derive(Args, Debug)]
pub struct HostdArgs {
    /// The HTTPS API's address.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// The NBD server's address (port 0: any free port; clients learn it per session).
    #[arg(long, value_name = "ADDR:PORT")]
    nbd_listen: Option<SocketAddr>,
    /// Seconds a backup session lives without its client's keepalive.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    lease: u64,
    /// Seconds a login token lives.
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    token_ttl: u64,
    /// Seconds a client may take for its TLS handshake and request headers.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    handshake_timeout: u64,
    /// Also serve disks over plain NBD (the proxies' `-m nbd` transport): only on a
    /// trusted backup network. Without it every disk travels over TLS.
    #[arg(long)]
    allow_plain_nbd: bool,
    #[command(flatten)]
    root: crate::cmd::host::RootArg,
}

/// Runs the agent until SIGINT or SIGTERM.
pub fn hostd(a: HostdArgs) -> Result<()> {
    let root = a.root.path();
    host::Host::open(&root).with_context(|| format!("open host {}", root.display()))?;
    let mut config = agent::server::Config::new(root, a.listen);
    if let Some(n) = a.nbd_listen {
        config.nbd_listen = n;
    }
    config.lease = Duration::from_secs(a.lease.max(1));
    config.token_ttl = Duration::from_secs(a.token_ttl.max(1));
    config.handshake_timeout = Duration::from_secs(a.handshake_timeout.max(1));
    config.allow_plain_nbd = a.allow_plain_nbd;
    agent::server::run(
        &config,
        &mut |l, cleaned| {
            for vm in cleaned {
                println!("Committed what an interrupted proxy backup of {vm} left");
            }
            println!(
                "vcb hostd listening on https://{} (NBD on {})",
                l.api, l.nbd
            );
        },
        None,
    )?;
    println!("vcb hostd stopped");
    Ok(())
}

/// `vcb host user ...`.
#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user (password from --password-file, or asked on the terminal).
    Add {
        /// The user name.
        name: String,
        /// admin, backup or readonly.
        #[arg(long)]
        role: String,
        /// A file whose first line is the password.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Replace an existing user's role and password.
        #[arg(long)]
        replace: bool,
    },
    /// Remove a user.
    Remove {
        /// The user name.
        name: String,
    },
    /// List users and roles.
    List,
}

/// Runs `vcb host user ...` on the host in `root`.
pub fn user(root: &Path, cmd: UserCmd) -> Result<()> {
    let dir = agent::agent_dir(root);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut users = agent::users::Users::load(&dir)?;
    match cmd {
        UserCmd::Add {
            name,
            role,
            password_file,
            replace,
        } => {
            let role: agent::users::Role = role.parse()?;
            let password =
                read_password(password_file.as_deref(), &format!("Password for {name}: "))?;
            users.add(&name, role, &password, replace)?;
            println!(
                "User {name} ({role}) saved in {}",
                dir.join(agent::users::USERS_FILE).display()
            );
        }
        UserCmd::Remove { name } => {
            users.remove(&name)?;
            println!("User {name} removed");
        }
        UserCmd::List => {
            for (name, role) in users.list() {
                println!("{name}\t{role}");
            }
        }
    }
    Ok(())
}

/// Creates (or with `replace`, replaces) the agent's certificate and prints its
/// thumbprint; an existing one is only shown.
pub fn cert(root: &Path, name: &str, replace: bool) -> Result<()> {
    let dir = agent::agent_dir(root);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let cert = dir.join(agent::tls::CERT_FILE);
    if cert.exists() && !replace {
        let (chain, _) = agent::tls::load_identity(&dir)?;
        let first = chain.first().context("empty certificate file")?;
        println!("Host certificate {}", cert.display());
        println!("SHA-256 thumbprint: {}", agent::tls::thumbprint(first));
        return Ok(());
    }
    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let dns_safe = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if dns_safe && !names.iter().any(|n| n == name) {
        names.insert(0, name.to_owned());
    }
    let thumb = agent::tls::init_cert(&dir, &names, replace)?;
    println!(
        "Created host certificate {} for {}",
        cert.display(),
        names.join(", ")
    );
    println!("SHA-256 thumbprint: {thumb}");
    Ok(())
}

/// A password from the first line of `file`, or asked on the terminal without echo.
pub fn read_password(file: Option<&Path>, prompt: &str) -> Result<String> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        return Ok(text.lines().next().unwrap_or_default().to_owned());
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("no password: pass --password-file FILE (standard input is not a terminal)");
    }
    Ok(rpassword::prompt_password(prompt)?)
}

/// Where a tool's host is, with the settings (backuptools.conf, read once) it was
/// found by.
pub enum Target {
    /// This machine's host root.
    Local(host::Host, crate::tools::conf::ToolConf),
    /// A host agent, logged in with the tool's USERNAME and PASSWORD.
    Remote(Arc<agent::client::Agent>, crate::tools::conf::ToolConf),
}

/// The host a tool works on: the agent VCHOST (or `-h`) names, or this machine's.
pub fn tool_target(
    tool: &crate::tools::conf::ToolArgs,
    overrides: &crate::tools::conf::Overrides,
) -> Result<Target> {
    let conf = crate::cmd::backup::load_conf(&tool.host_args, overrides)?;
    let Some(url) = conf.remote_host() else {
        let (host, conf) = crate::cmd::backup::open_host_with(&tool.host_args, conf)?;
        return Ok(Target::Local(host, conf));
    };
    let agent = connect(
        url,
        conf.username.as_deref(),
        conf.password.as_deref(),
        &tool.certs,
    )?;
    Ok(Target::Remote(agent, conf))
}

/// Options of the tools for a remote host's certificate.
#[derive(Args, Debug, Clone, Default)]
pub struct CertArgs {
    /// Trust and record the host agent's certificate if this machine does not know it yet.
    #[arg(long)]
    pub accept_new_host_cert: bool,
    /// Trust host certificates issued by this CA (PEM) instead of pinning thumbprints.
    #[arg(long, value_name = "PEM")]
    pub host_ca: Option<PathBuf>,
    /// A file whose first line is the host agent's password (instead of -p or
    /// PASSWORD; `--password-file` is a repository's passphrase).
    #[arg(long, value_name = "FILE", env = "VCB_HOST_PASSWORD_FILE")]
    pub host_password_file: Option<PathBuf>,
    /// Transport of disk data from a host agent: nbdssl (NBD over TLS, the default) or
    /// nbd (plain, when the agent allows it).
    #[arg(short = 'm', value_name = "MODE", default_value = "nbdssl")]
    pub transport: agent::client::Transport,
}

/// Logs in to the agent at `url` with the user and password of the tool's settings.
pub fn connect(
    url: &str,
    user: Option<&str>,
    password: Option<&str>,
    certs: &CertArgs,
) -> Result<Arc<agent::client::Agent>> {
    agent::client::parse_url(url)?;
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        bail!("host {url}: no user name (set USERNAME in backuptools.conf or pass -u)");
    };
    let password = match (&certs.host_password_file, password) {
        (Some(f), _) => read_password(Some(f), "")?,
        (None, Some(p)) => p.to_owned(),
        (None, None) => read_password(None, &format!("Password for {user}@{url}: "))?,
    };
    let policy = match &certs.host_ca {
        Some(ca) => agent::tls::TrustPolicy::Ca(ca.clone()),
        None => agent::tls::TrustPolicy::Pinned {
            file: agent::trust::default_file(),
            accept_new: certs.accept_new_host_cert,
        },
    };
    Ok(Arc::new(agent::client::Agent::login(
        url, user, &password, policy,
    )?))
}

/// `vcb --host URL --user NAME ...`: vcb's own commands through a host agent.
#[derive(Args, Debug, Clone, Default)]
pub struct GlobalHost {
    /// Run the command against a host agent (https://HOST[:PORT]) instead of this
    /// machine's host root (backup and restore).
    #[arg(long = "host", value_name = "URL", env = "VCB_HOST", global = true)]
    pub url: Option<String>,
    /// The agent user (with --host).
    #[arg(long, value_name = "USER", env = "VCB_USER", global = true)]
    pub user: Option<String>,
    /// Certificate trust, password file and transport (with --host).
    #[command(flatten)]
    pub certs: CertArgs,
}

static GLOBAL_HOST: std::sync::OnceLock<GlobalHost> = std::sync::OnceLock::new();

/// Records `vcb --host ...` for the command that runs.
pub fn set_global_host(g: GlobalHost) {
    let _ = GLOBAL_HOST.set(g);
}

/// The agent `vcb --host` names, logged in; `None` without `--host`.
pub fn global_agent() -> Result<Option<(Arc<agent::client::Agent>, agent::client::Transport)>> {
    let Some(g) = GLOBAL_HOST.get() else {
        return Ok(None);
    };
    let Some(url) = g.url.as_deref().filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let agent = connect(url, g.user.as_deref(), None, &g.certs)?;
    Ok(Some((agent, g.certs.transport)))
}

/// Whether `vcb --host` was given.
pub fn has_global_host() -> bool {
    GLOBAL_HOST
        .get()
        .and_then(|g| g.url.as_deref())
        .is_some_and(|u| !u.is_empty())
}
