//! Establishing a session: resolve the target through the ssh config, open TCP, verify
//! the host key, authenticate by key, start the SFTP subsystem.

use crate::error::{Error, Result};
use crate::known_hosts::{self, Verdict};
use crate::options::ConnectOptions;
use crate::ssh_config::{self, Tokens};
use crate::url::RemoteUrl;
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{
    Algorithm, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate,
};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Where and as whom a session is connected, after the ssh config was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The remote user.
    pub user: String,
    /// The host connected to (`HostName` when the URL named an alias).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Target {
    /// `sftp://user@host:port/path` for messages.
    pub fn location(&self, path: &str) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("sftp://{}@{}:{}{}", self.user, host, self.port, path)
    }
}

/// A [`Target`] plus the key files to offer, in order.
pub(crate) struct Resolved {
    pub target: Target,
    /// Key files to try; `explicit` ones must load.
    pub identity_files: Vec<PathBuf>,
    pub explicit_identity: bool,
}

/// Apply the ssh config to the URL and pick the key files.
///
/// # Errors
/// Config file errors, or [`Error::NoUser`].
pub(crate) fn resolve(url: &RemoteUrl, opts: &ConnectOptions) -> Result<Resolved> {
    let config = match opts.ssh_config_path() {
        Some(path) => ssh_config::lookup(&path, &url.host)?,
        None => ssh_config::HostConfig::default(),
    };
    let host = config.hostname.clone().unwrap_or_else(|| url.host.clone());
    let port = url.port.or(config.port).unwrap_or(22);
    let user = url
        .user
        .clone()
        .or(config.user.clone())
        .or(opts.env.local_user.clone())
        .ok_or_else(|| Error::NoUser {
            host: url.host.clone(),
        })?;
    let target = Target { user, host, port };
    if let Some(explicit) = &opts.identity_file {
        return Ok(Resolved {
            target,
            identity_files: vec![explicit.clone()],
            explicit_identity: true,
        });
    }
    let mut identity_files = Vec::new();
    if opts.use_default_keys {
        let tokens = Tokens {
            home: opts.env.home.as_deref(),
            local_user: opts.env.local_user.as_deref(),
            remote_user: &target.user,
            host: &target.host,
            port,
        };
        let defaults = ["~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa"];
        let raw: Vec<&str> = if config.identity_files.is_empty() {
            defaults.to_vec()
        } else {
            config.identity_files.iter().map(String::as_str).collect()
        };
        identity_files = raw
            .iter()
            .filter_map(|r| ssh_config::expand_path(r, &tokens))
            .collect();
    }
    Ok(Resolved {
        target,
        identity_files,
        explicit_identity: false,
    })
}

/// The russh event handler: checks the host key and keeps the verdict for the caller.
pub(crate) struct Client {
    target: Target,
    /// The user's known_hosts file (where new keys are recorded).
    known_hosts: Option<PathBuf>,
    /// Every known_hosts file consulted (the user's, then the system-wide one).
    all_known_hosts: Vec<PathBuf>,
    accept_new: bool,
    /// Why the host key was refused, for [`Error`] instead of russh's generic one.
    pub refusal: Arc<Mutex<Option<Error>>>,
}

impl Client {
    pub(crate) fn new(target: &Target, opts: &ConnectOptions) -> Client {
        Client {
            target: target.clone(),
            known_hosts: opts.known_hosts_path(),
            all_known_hosts: opts.known_hosts_files(),
            accept_new: opts.accept_new_host_key,
            refusal: Arc::new(Mutex::new(None)),
        }
    }

    fn verify(&self, key: &PublicKey) -> Result<()> {
        let Target { host, port, .. } = &self.target;
        let fingerprint = known_hosts::fingerprint(key);
        let algorithm = key.algorithm().to_string();
        let path = self
            .known_hosts
            .clone()
            .unwrap_or_else(|| PathBuf::from("~/.ssh/known_hosts"));
        let (verdict, file) = known_hosts::check_all(&self.all_known_hosts, host, *port, key)?;
        let file = file.unwrap_or_else(|| path.clone());
        match verdict {
            Verdict::Known => Ok(()),
            Verdict::Revoked { line } => Err(Error::HostKeyRevoked {
                host: host.clone(),
                port: *port,
                algorithm,
                fingerprint,
                known_hosts: file,
                line,
            }),
            Verdict::Changed { line } => Err(Error::HostKeyChanged {
                host: host.clone(),
                port: *port,
                algorithm,
                fingerprint,
                known_hosts: file,
                line,
            }),
            Verdict::Unknown if self.accept_new && self.known_hosts.is_some() => {
                tracing::info!(%host, port, %fingerprint, known_hosts = %path.display(), "recording new host key");
                known_hosts::record(&path, host, *port, key)
            }
            Verdict::Unknown => Err(Error::UnknownHostKey {
                host: host.clone(),
                port: *port,
                algorithm,
                fingerprint,
                known_hosts: path,
            }),
        }
    }
}

impl russh::client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let outcome = match offered {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.verify(key),
            PublicKeyOrCertificate::Certificate(_) => Err(Error::Ssh {
                host: self.target.host.clone(),
                port: self.target.port,
                detail: "host certificates are not supported".to_owned(),
            }),
        };
        match outcome {
            Ok(()) => Ok(true),
            Err(e) => {
                if let Ok(mut slot) = self.refusal.lock() {
                    *slot = Some(e);
                }
                Ok(false)
            }
        }
    }
}

/// The russh client configuration: AES-GCM first (hardware AES makes it the fastest on
/// loopback and LAN), the host key algorithms known_hosts records for the server first
/// (`known`), keepalives, no inactivity timeout (SFTP requests have their own).
pub(crate) fn ssh_config(known: &[Algorithm]) -> russh::client::Config {
    use russh::cipher;
    let mut config = russh::client::Config::default();
    if !known.is_empty() {
        let mut keys: Vec<Algorithm> = config
            .preferred
            .key
            .iter()
            .filter(|a| known.contains(a))
            .cloned()
            .collect();
        keys.extend(
            config
                .preferred
                .key
                .iter()
                .filter(|a| !known.contains(a))
                .cloned(),
        );
        config.preferred.key = std::borrow::Cow::Owned(keys);
    }
    config.preferred.cipher = std::borrow::Cow::Owned(vec![
        cipher::AES_128_GCM,
        cipher::AES_256_GCM,
        cipher::CHACHA20_POLY1305,
        cipher::AES_256_CTR,
        cipher::AES_192_CTR,
        cipher::AES_128_CTR,
    ]);
    config.nodelay = true;
    // Between transfers a backup may stay idle for long (local conversion): keepalives
    // keep NAT state alive and detect a dead server within about a minute.
    config.keepalive_interval = Some(std::time::Duration::from_secs(15));
    config.keepalive_max = 4;
    config.client_id = russh::SshId::Standard(std::borrow::Cow::Borrowed(concat!(
        "SSH-2.0-vcb_",
        env!("CARGO_PKG_VERSION")
    )));
    config
}

/// Offer each key file, then the agent's keys, until one is accepted.
///
/// # Errors
/// [`Error::BadKey`] for an explicit key that cannot be loaded, [`Error::AuthFailed`]
/// listing what was offered, [`Error::Ssh`] when the transport fails meanwhile.
pub(crate) async fn authenticate(
    handle: &mut russh::client::Handle<Client>,
    resolved: &Resolved,
    opts: &ConnectOptions,
) -> Result<()> {
    let Target { user, host, port } = &resolved.target;
    let ssh_err = |e: russh::Error| Error::Ssh {
        host: host.clone(),
        port: *port,
        detail: e.to_string(),
    };
    let mut tried = Vec::new();
    for path in &resolved.identity_files {
        let key = match load_key(path) {
            Ok(Some(key)) => key,
            Ok(None) if !resolved.explicit_identity => continue,
            Ok(None) => {
                return Err(Error::BadKey {
                    path: path.clone(),
                    reason: "no such file".to_owned(),
                });
            }
            Err(reason) if resolved.explicit_identity => {
                return Err(Error::BadKey {
                    path: path.clone(),
                    reason,
                })
            }
            Err(reason) => {
                tried.push(format!("{} ({reason}; skipped)", path.display()));
                continue;
            }
        };
        let hash = rsa_hash(handle, key.algorithm()).await;
        let result = handle.authenticate_publickey(
            user.clone(),
            PrivateKeyWithHashAlg::new(Arc::new(key), hash),
        );
        if result.await.map_err(ssh_err)?.success() {
            return Ok(());
        }
        tried.push(path.display().to_string());
    }
    if let (true, Some(socket)) = (opts.use_agent, &opts.env.agent_socket) {
        if offer_agent_keys(handle, user, socket, &mut tried).await {
            return Ok(());
        }
    }
    let tried = if tried.is_empty() {
        "no key found".to_owned()
    } else {
        tried.join(", ")
    };
    Err(Error::AuthFailed {
        user: user.clone(),
        host: host.clone(),
        port: *port,
        tried,
    })
}

/// `Ok(None)` when the file does not exist; `Err(reason)` when it cannot be used. A key
/// the user owns that others may read is refused, as ssh refuses it ("UNPROTECTED
/// PRIVATE KEY FILE").
fn load_key(path: &std::path::Path) -> std::result::Result<Option<PrivateKey>, String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(None);
    };
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    if meta.uid() == me && meta.mode() & 0o077 != 0 {
        return Err(format!(
            "permissions {:04o} are too open: a private key must not be accessible by others (chmod 600 it)",
            meta.mode() & 0o7777
        ));
    }
    match russh::keys::load_secret_key(path, None) {
        Ok(key) => Ok(Some(key)),
        Err(russh::keys::Error::KeyIsEncrypted) => Err(
            "protected by a passphrase, which is never prompted for; load it into the ssh agent"
                .to_owned(),
        ),
        Err(e) => Err(e.to_string()),
    }
}

/// The signature hash for RSA keys (rsa-sha2-512/256 when the server says so).
async fn rsa_hash(
    handle: &russh::client::Handle<Client>,
    algorithm: Algorithm,
) -> Option<russh::keys::HashAlg> {
    if !matches!(algorithm, Algorithm::Rsa { .. }) {
        return None;
    }
    handle
        .best_supported_rsa_hash()
        .await
        .ok()
        .flatten()
        .flatten()
}

/// Try every plain key the agent holds; `true` once one is accepted.
async fn offer_agent_keys(
    handle: &mut russh::client::Handle<Client>,
    user: &str,
    socket: &std::path::Path,
    tried: &mut Vec<String>,
) -> bool {
    let mut agent = match AgentClient::connect_uds(socket).await {
        Ok(agent) => agent,
        Err(e) => {
            tried.push(format!("agent at {} (unreachable: {e})", socket.display()));
            return false;
        }
    };
    let identities = match agent.request_identities().await {
        Ok(ids) => ids,
        Err(e) => {
            tried.push(format!("agent ({e})"));
            return false;
        }
    };
    for identity in identities {
        let AgentIdentity::PublicKey { key, .. } = identity else {
            continue;
        };
        let label = format!("agent key {}", known_hosts::fingerprint(&key));
        let hash = rsa_hash(handle, key.algorithm()).await;
        match handle
            .authenticate_publickey_with(user, key, hash, &mut agent)
            .await
        {
            Ok(result) if result.success() => return true,
            Ok(_) => tried.push(label),
            Err(e) => tried.push(format!("{label} ({e})")),
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::SshEnv;

    fn opts(home: Option<&std::path::Path>, local_user: Option<&str>) -> ConnectOptions {
        let env = SshEnv {
            home: home.map(Into::into),
            local_user: local_user.map(Into::into),
            agent_socket: None,
        };
        ConnectOptions::new(env)
    }

    fn url(s: &str) -> RemoteUrl {
        RemoteUrl::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn no_user_anywhere() {
        let r = resolve(&url("scp://vault:/srv"), &opts(None, None));
        assert!(matches!(r, Err(Error::NoUser { ref host }) if host == "vault"));
    }

    #[test]
    fn url_then_local_user_and_default_keys() {
        let home = std::path::Path::new("/home/u");
        let r = resolve(&url("scp://vault:/srv"), &opts(Some(home), Some("u")))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.target,
            Target {
                user: "u".into(),
                host: "vault".into(),
                port: 22
            }
        );
        let keys: Vec<String> = r
            .identity_files
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            keys,
            [
                "/home/u/.ssh/id_ed25519",
                "/home/u/.ssh/id_ecdsa",
                "/home/u/.ssh/id_rsa"
            ]
        );
        assert!(!r.explicit_identity);
        let r = resolve(
            &url("sftp://b@vault:2200/srv"),
            &opts(Some(home), Some("u")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.target.user.as_str(), r.target.port), ("b", 2200));
    }

    #[test]
    fn config_alias_and_explicit_key() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        std::fs::create_dir(dir.path().join(".ssh")).unwrap_or_else(|e| panic!("{e}"));
        let config =
            "Host vault\n HostName 10.1.2.3\n Port 2222\n User backup\n IdentityFile ~/.ssh/k_%r\n";
        std::fs::write(dir.path().join(".ssh/config"), config).unwrap_or_else(|e| panic!("{e}"));
        let mut o = opts(Some(dir.path()), Some("u"));
        let r = resolve(&url("scp://vault:/srv"), &o).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.target,
            Target {
                user: "backup".into(),
                host: "10.1.2.3".into(),
                port: 2222
            }
        );
        assert_eq!(r.identity_files, vec![dir.path().join(".ssh/k_backup")]);
        // The URL's port and user win over the config's.
        let r = resolve(&url("scp://root@vault:23:/srv"), &o).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.target.user.as_str(), r.target.port), ("root", 23));
        o.identity_file = Some("/keys/vcb".into());
        let r = resolve(&url("scp://vault:/srv"), &o).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (r.identity_files, r.explicit_identity),
            (vec![PathBuf::from("/keys/vcb")], true)
        );
        o.use_ssh_config = false;
        let r = resolve(&url("scp://vault:/srv"), &o).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.target,
            Target {
                user: "u".into(),
                host: "vault".into(),
                port: 22
            }
        );
    }

    #[test]
    fn bad_config_is_a_typed_error() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let path = dir.path().join("config");
        std::fs::write(&path, "Host *\n  Port 0\n").unwrap_or_else(|e| panic!("{e}"));
        let mut o = opts(None, Some("u"));
        o.ssh_config = Some(path.clone());
        let r = resolve(&url("scp://vault:/srv"), &o);
        assert!(matches!(r, Err(Error::SshConfig { path: ref p, line: 2, .. }) if *p == path));
        // A config that is a folder cannot be read.
        o.ssh_config = Some(dir.path().to_owned());
        assert!(matches!(
            resolve(&url("scp://vault:/srv"), &o),
            Err(Error::LocalIo { .. })
        ));
    }

    #[test]
    fn unreadable_known_hosts_is_a_typed_error() {
        let Ok(dir) = tempfile::tempdir() else {
            panic!("tempdir")
        };
        let mut o = opts(None, Some("u"));
        o.known_hosts = Some(dir.path().to_owned());
        let target = Target {
            user: "u".into(),
            host: "h".into(),
            port: 22,
        };
        let key = PublicKey::from_openssh(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ",
        );
        let Ok(key) = key else { panic!("key") };
        let client = Client::new(&target, &o);
        assert!(matches!(client.verify(&key), Err(Error::LocalIo { .. })));
    }
}
