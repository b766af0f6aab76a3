//! The shared OpenSSH test server ([`testkit::sshd`]) plus what needs `sftp` types:
//! connect options isolated from the real user, the server's URL, a session.

use sftp::{ConnectOptions, RemoteUrl, SshEnv};
use std::time::Duration;
use testkit::sshd::Server;

/// `sftp` views of a [`Server`].
pub trait SftpServer {
    /// `sftp://user@127.0.0.1:port<root>`.
    fn url(&self) -> RemoteUrl;
    /// Options isolated from the real user: the test key, the test known_hosts, no
    /// default keys, agent or ssh config, short timeouts.
    fn options(&self) -> ConnectOptions;
    /// Connect with [`options`](Self::options).
    fn connect(&self) -> sftp::Session;
}

impl SftpServer for Server {
    fn url(&self) -> RemoteUrl {
        RemoteUrl::parse(&self.sftp_url()).expect("url")
    }

    fn options(&self) -> ConnectOptions {
        let mut opts = ConnectOptions::new(SshEnv {
            home: None,
            local_user: Some(self.user.clone()),
            agent_socket: None,
        });
        opts.identity_file = Some(self.client_key.clone());
        opts.use_default_keys = false;
        opts.use_agent = false;
        opts.use_ssh_config = false;
        opts.known_hosts = Some(self.known_hosts.clone());
        opts.global_known_hosts = None;
        opts.timeout = Duration::from_secs(10);
        opts
    }

    fn connect(&self) -> sftp::Session {
        sftp::connect(&self.url(), &self.options()).unwrap_or_else(|e| {
            self.dump("connect failed");
            panic!("connect: {e}")
        })
    }
}
