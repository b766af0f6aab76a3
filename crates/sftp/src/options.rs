//! What [`connect`](crate::connect) needs besides the URL: the local SSH environment and
//! the caller's choices.

use std::path::PathBuf;
use std::time::Duration;

/// The local user's SSH surroundings: home folder, user name and agent socket.
///
/// Library code never reads the process environment on its own;
/// [`SshEnv::from_process`] is the one place that does, for front ends to call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SshEnv {
    /// Home folder: `~/.ssh/config`, `~/.ssh/known_hosts` and the default keys live there.
    pub home: Option<PathBuf>,
    /// The local user name, the remote user when neither URL nor ssh config names one.
    pub local_user: Option<String>,
    /// The ssh agent's socket (`SSH_AUTH_SOCK`), tried after key files.
    pub agent_socket: Option<PathBuf>,
}

impl SshEnv {
    /// Read `HOME`, `USER` (else the password database entry of the real uid) and
    /// `SSH_AUTH_SOCK` from the process.
    pub fn from_process() -> SshEnv {
        let nonempty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let passwd = passwd_entry();
        SshEnv {
            home: nonempty("HOME")
                .map(PathBuf::from)
                .or_else(|| passwd.as_ref().map(|p| p.1.clone())),
            local_user: nonempty("USER")
                .and_then(|u| u.into_string().ok())
                .or_else(|| passwd.map(|p| p.0)),
            agent_socket: nonempty("SSH_AUTH_SOCK").map(PathBuf::from),
        }
    }
}

/// (user name, home folder) of the real uid from the password database.
fn passwd_entry() -> Option<(String, PathBuf)> {
    use std::ffi::CStr;
    use std::os::unix::ffi::OsStrExt;
    let mut pwd = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getuid has no preconditions. getpwuid_r writes at most `buf.len()` bytes
    // into `buf`, fills `pwd` and sets `result` to `pwd` on success or null otherwise;
    // all pointers are valid for the duration of the call.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::getuid(),
            pwd.as_mut_ptr(),
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success `result` points to `pwd`, fully initialised by getpwuid_r, and
    // its string fields point into `buf`, which is still alive and NUL-terminated there.
    let (name, dir) = unsafe {
        let pwd = &*result;
        if pwd.pw_name.is_null() || pwd.pw_dir.is_null() {
            return None;
        }
        (CStr::from_ptr(pwd.pw_name), CStr::from_ptr(pwd.pw_dir))
    };
    let name = name.to_str().ok()?.to_owned();
    let dir = PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes()));
    Some((name, dir))
}

/// How to connect and authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Home folder, local user and agent socket.
    pub env: SshEnv,
    /// An explicit private key (`-i`, `VCB_SSH_KEY`). When set, it is the only key file
    /// tried (the agent still is, if [`use_agent`](Self::use_agent)).
    pub identity_file: Option<PathBuf>,
    /// Without an explicit key: try the ssh config's `IdentityFile`s, then
    /// `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`.
    pub use_default_keys: bool,
    /// Offer the agent's keys when [`SshEnv::agent_socket`] is set.
    pub use_agent: bool,
    /// The known_hosts file; `None` means `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    /// The system-wide known_hosts file, consulted after the user's (never written);
    /// `None` skips it. Default `/etc/ssh/ssh_known_hosts`.
    pub global_known_hosts: Option<PathBuf>,
    /// Record an unknown host key in the known_hosts file instead of failing. A *changed*
    /// key is refused regardless.
    pub accept_new_host_key: bool,
    /// The ssh client config; `None` means `~/.ssh/config`.
    pub ssh_config: Option<PathBuf>,
    /// Read the ssh client config at all.
    pub use_ssh_config: bool,
    /// Limit for connecting and for each SFTP request's answer.
    pub timeout: Duration,
    /// SFTP requests kept in flight by uploads and downloads.
    pub requests_in_flight: usize,
    /// Bytes per SFTP read or write request (capped by the server's limits).
    pub request_bytes: u32,
    /// Most entries a folder listing may return (default
    /// [`MAX_DIR_ENTRIES`](crate::MAX_DIR_ENTRIES)).
    pub max_dir_entries: usize,
}

impl ConnectOptions {
    /// Defaults for the given environment: default keys, agent, `~/.ssh/config` and
    /// `~/.ssh/known_hosts`, no new host keys accepted, 30 s timeout, 64 requests of
    /// 32 KiB in flight (what OpenSSH's sftp uses).
    pub fn new(env: SshEnv) -> ConnectOptions {
        ConnectOptions {
            env,
            identity_file: None,
            use_default_keys: true,
            use_agent: true,
            known_hosts: None,
            global_known_hosts: Some(PathBuf::from("/etc/ssh/ssh_known_hosts")),
            accept_new_host_key: false,
            ssh_config: None,
            use_ssh_config: true,
            timeout: Duration::from_secs(30),
            requests_in_flight: 64,
            request_bytes: 32 * 1024,
            max_dir_entries: crate::MAX_DIR_ENTRIES,
        }
    }

    /// The known_hosts file in effect, if there is one.
    pub(crate) fn known_hosts_path(&self) -> Option<PathBuf> {
        self.known_hosts
            .clone()
            .or_else(|| self.env.home.as_ref().map(|h| h.join(".ssh/known_hosts")))
    }

    /// Every known_hosts file consulted: the user's, then the system-wide one.
    pub(crate) fn known_hosts_files(&self) -> Vec<PathBuf> {
        self.known_hosts_path()
            .into_iter()
            .chain(self.global_known_hosts.clone())
            .collect()
    }

    /// The ssh config file in effect, if there is one.
    pub(crate) fn ssh_config_path(&self) -> Option<PathBuf> {
        if !self.use_ssh_config {
            return None;
        }
        self.ssh_config
            .clone()
            .or_else(|| self.env.home.as_ref().map(|h| h.join(".ssh/config")))
    }
}
