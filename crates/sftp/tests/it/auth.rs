//! Authentication, host keys and the ssh config, against a real sshd.

use crate::server::SftpServer;
use sftp::{Error, RemoteUrl, SshEnv};
use std::process::Command;
use testkit::sshd::{keygen, Server};
use testkit::tools::run;

#[test]
fn wrong_key_names_user_and_host() {
    let Some(server) = Server::start() else {
        return;
    };
    let other = server.dir.path().join("other_key");
    keygen(&other);
    let mut opts = server.options();
    opts.identity_file = Some(other.clone());
    let err = sftp::connect(&server.url(), &opts)
        .err()
        .expect("wrong key must fail");
    let msg = err.to_string();
    eprintln!("error: {msg}");
    assert!(
        matches!(&err, Error::AuthFailed { user, host, .. } if *user == server.user && host == "127.0.0.1"),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("{}@127.0.0.1:{}", server.user, server.port)),
        "{msg}"
    );
    assert!(msg.contains("other_key"), "{msg}");
}

#[test]
fn missing_or_unusable_explicit_key() {
    let Some(server) = Server::start() else {
        return;
    };
    let mut opts = server.options();
    opts.identity_file = Some(server.dir.path().join("nope"));
    assert!(matches!(
        sftp::connect(&server.url(), &opts),
        Err(Error::BadKey { .. })
    ));
    let locked = server.dir.path().join("locked_key");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "secret", "-f"])
        .arg(&locked));
    opts.identity_file = Some(locked);
    let err = sftp::connect(&server.url(), &opts)
        .err()
        .expect("encrypted key");
    assert!(
        matches!(&err, Error::BadKey { reason, .. } if reason.contains("passphrase")),
        "{err}"
    );
}

/// `SHA256:...` of the server's host key as ssh-keygen prints it.
fn host_fingerprint(server: &Server) -> String {
    let out = run(Command::new("ssh-keygen")
        .arg("-lf")
        .arg(server.dir.path().join("host_key.pub")));
    out.split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_owned()
}

#[test]
fn unknown_host_key_is_refused_then_accepted_explicitly() {
    let Some(server) = Server::start() else {
        return;
    };
    let known_hosts = server.dir.path().join("fresh_known_hosts");
    let mut opts = server.options();
    opts.known_hosts = Some(known_hosts.clone());
    let err = sftp::connect(&server.url(), &opts)
        .err()
        .expect("unknown host key");
    let fingerprint = host_fingerprint(&server);
    eprintln!("error: {err}");
    assert!(
        matches!(&err, Error::UnknownHostKey { host, port, fingerprint: f, .. }
            if host == "127.0.0.1" && *port == server.port && *f == fingerprint),
        "{err}"
    );
    assert!(err.to_string().contains(&fingerprint));
    assert!(!known_hosts.exists(), "nothing recorded without the option");

    opts.accept_new_host_key = true;
    drop(sftp::connect(&server.url(), &opts).expect("accepted"));
    let recorded = std::fs::read_to_string(&known_hosts).expect("recorded");
    assert!(
        recorded.starts_with(&format!("[127.0.0.1]:{} ssh-ed25519 ", server.port)),
        "{recorded}"
    );
    // OpenSSH's own tools find the recorded entry.
    run(Command::new("ssh-keygen")
        .arg("-F")
        .arg(format!("[127.0.0.1]:{}", server.port))
        .arg("-f")
        .arg(&known_hosts));

    opts.accept_new_host_key = false;
    drop(sftp::connect(&server.url(), &opts).expect("known now"));
}

#[test]
fn changed_host_key_is_refused_even_with_accept() {
    let Some(server) = Server::start() else {
        return;
    };
    let impostor = server.dir.path().join("impostor");
    keygen(&impostor);
    let impostor_pub = std::fs::read_to_string(impostor.with_extension("pub")).expect("pub");
    let known_hosts = server.dir.path().join("changed_known_hosts");
    std::fs::write(
        &known_hosts,
        format!("# old\n[127.0.0.1]:{} {impostor_pub}", server.port),
    )
    .expect("write");
    let mut opts = server.options();
    opts.known_hosts = Some(known_hosts);
    opts.accept_new_host_key = true;
    let err = sftp::connect(&server.url(), &opts)
        .err()
        .expect("changed key");
    eprintln!("error: {err}");
    assert!(
        matches!(&err, Error::HostKeyChanged { line: 2, fingerprint, .. } if *fingerprint == host_fingerprint(&server)),
        "{err}"
    );
}

#[test]
fn hashed_known_hosts_entries() {
    let Some(server) = Server::start() else {
        return;
    };
    run(Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&server.known_hosts));
    let text = std::fs::read_to_string(&server.known_hosts).expect("read");
    assert!(text.starts_with("|1|"), "{text}");
    drop(server.connect());
}

#[test]
fn ssh_config_alias_and_default_keys_from_home() {
    let Some(server) = Server::start() else {
        return;
    };
    // A home folder of our own: ~/.ssh/config names the alias, ~/.ssh/id_ed25519 is the key.
    let home = server.dir.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).expect("mkdir");
    std::fs::copy(&server.client_key, home.join(".ssh/id_ed25519")).expect("copy key");
    std::fs::copy(&server.known_hosts, home.join(".ssh/known_hosts")).expect("copy known_hosts");
    let config = format!(
        "Host vault\n  HostName 127.0.0.1\n  Port {}\n  User {}\n",
        server.port, server.user
    );
    std::fs::write(home.join(".ssh/config"), config).expect("config");
    let env = SshEnv {
        home: Some(home.clone()),
        local_user: Some("nobody-local".into()),
        agent_socket: None,
    };
    let opts = sftp::ConnectOptions::new(env);
    let url = RemoteUrl::parse(&format!("scp://vault:{}", server.root())).expect("url");
    let session = sftp::connect(&url, &opts).expect("alias + default key");
    assert_eq!(
        (session.target().host.as_str(), session.target().port),
        ("127.0.0.1", server.port)
    );
    assert_eq!(session.target().user, server.user);
    assert!(session.exists(&server.root()).expect("exists"));
    drop(session);

    // IdentityFile in the config replaces the default key names.
    std::fs::rename(home.join(".ssh/id_ed25519"), home.join(".ssh/vault_key")).expect("rename");
    let config = format!(
        "Host vault\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile ~/.ssh/vault_key\n",
        server.port, server.user
    );
    std::fs::write(home.join(".ssh/config"), config).expect("config");
    drop(sftp::connect(&url, &opts).expect("IdentityFile"));
}

#[test]
fn agent_keys_are_offered() {
    let Some(server) = Server::start() else {
        return;
    };
    if !testkit::tools::require_tools(&["ssh-agent", "ssh-add"]) {
        return;
    }
    let socket = server.dir.path().join("agent.sock");
    let mut agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("agent");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    run(Command::new("ssh-add")
        .arg("-q")
        .arg(&server.client_key)
        .env("SSH_AUTH_SOCK", &socket));
    let mut opts = server.options();
    opts.identity_file = None;
    opts.use_agent = true;
    opts.env.agent_socket = Some(socket);
    let result = sftp::connect(&server.url(), &opts);
    let _ = agent.kill();
    let _ = agent.wait();
    drop(result.expect("agent key accepted"));
}

/// A known_hosts file holding `line` for the server.
fn known_hosts_with(server: &Server, name: &str, text: &str) -> std::path::PathBuf {
    let path = server.dir.path().join(name);
    std::fs::write(&path, text).expect("write known_hosts");
    path
}

fn host_pub(server: &Server, file: &str) -> String {
    std::fs::read_to_string(server.dir.path().join(file)).expect("host key")
}

#[test]
fn issue_10_a_host_known_by_its_ecdsa_key_is_not_unknown() {
    let Some(server) = Server::start() else {
        return;
    };
    let ecdsa = host_pub(&server, "host_key_ecdsa.pub");
    let mut opts = server.options();
    opts.known_hosts = Some(known_hosts_with(
        &server,
        "ecdsa_only",
        &format!("[127.0.0.1]:{} {ecdsa}", server.port),
    ));
    drop(sftp::connect(&server.url(), &opts).expect("the known algorithm is negotiated"));
}

#[test]
fn issue_10_revoked_host_keys_are_refused() {
    let Some(server) = Server::start() else {
        return;
    };
    let ed = host_pub(&server, "host_key.pub");
    let mut opts = server.options();
    opts.known_hosts = Some(known_hosts_with(
        &server,
        "revoked",
        &format!("[127.0.0.1]:{} {ed}@revoked * {ed}", server.port),
    ));
    opts.accept_new_host_key = true;
    let err = sftp::connect(&server.url(), &opts).err().expect("revoked");
    assert!(
        matches!(err, Error::HostKeyRevoked { line: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("REVOKED"), "{err}");
}

#[test]
fn issue_10_the_system_known_hosts_file_is_read() {
    let Some(server) = Server::start() else {
        return;
    };
    let ed = host_pub(&server, "host_key.pub");
    let mut opts = server.options();
    opts.known_hosts = Some(server.dir.path().join("empty_user_known_hosts"));
    opts.global_known_hosts = Some(known_hosts_with(
        &server,
        "ssh_known_hosts",
        &format!("[127.0.0.1]:{} {ed}", server.port),
    ));
    drop(sftp::connect(&server.url(), &opts).expect("known system-wide"));
    assert!(!server.dir.path().join("empty_user_known_hosts").exists());
}

#[test]
fn issue_10_a_private_key_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let Some(server) = Server::start() else {
        return;
    };
    let key = server.dir.path().join("open_key");
    std::fs::copy(&server.client_key, &key).expect("copy key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut opts = server.options();
    opts.identity_file = Some(key.clone());
    let err = sftp::connect(&server.url(), &opts).err().expect("refused");
    assert!(
        matches!(&err, Error::BadKey { reason, .. } if reason.contains("too open")),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    drop(sftp::connect(&server.url(), &opts).expect("0600 is fine"));
}

#[test]
fn issue_10_ssh_config_include_names_the_host() {
    let Some(server) = Server::start() else {
        return;
    };
    let home = server.dir.path().join("home");
    let ssh = home.join(".ssh");
    std::fs::create_dir_all(ssh.join("config.d")).expect("mkdir");
    std::fs::write(ssh.join("config"), "Include config.d/*\n").expect("config");
    std::fs::write(
        ssh.join("config.d/backup-nas"),
        format!("Host nas\n  HostName 127.0.0.1\n  Port {}\n", server.port),
    )
    .expect("included");
    let mut opts = server.options();
    opts.use_ssh_config = true;
    opts.ssh_config = Some(ssh.join("config"));
    let url =
        RemoteUrl::parse(&format!("sftp://{}@nas{}", server.user, server.root())).expect("url");
    drop(sftp::connect(&url, &opts).expect("the alias from the included file"));
}
