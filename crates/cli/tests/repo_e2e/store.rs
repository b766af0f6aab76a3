//! The three places a repository can live, behind one helper: a local folder, a real
//! OpenSSH server (sftp://), a real SeaweedFS cluster (s3://).

use crate::util::{text, Env};
use std::process::Output;

/// Where the repository of a test lives.
pub enum Place {
    Local,
    Sftp(testkit::sshd::Server),
    S3(testkit::seaweed::Cluster),
}

/// A repository location with what its clients need (passphrase, SSH, S3).
pub struct Repo {
    /// As the tools take it (path or URL).
    pub spec: String,
    pub place: Place,
    vars: Vec<(String, String)>,
}

impl Repo {
    /// A repository folder `name` under the environment.
    pub fn local(env: &Env, name: &str) -> Repo {
        Repo::with(
            env,
            env.path(name).display().to_string(),
            Place::Local,
            Vec::new(),
        )
    }

    /// A repository on a fresh OpenSSH server, or `None` (SKIP).
    pub fn sftp(env: &Env) -> Option<Repo> {
        Repo::sftp_with(env, testkit::sshd::Quirks::default())
    }

    /// A repository on a fresh OpenSSH server with `quirks`, or `None` (SKIP).
    pub fn sftp_with(env: &Env, quirks: testkit::sshd::Quirks) -> Option<Repo> {
        let srv = testkit::sshd::Server::start_with(quirks)?;
        let home = srv.dir.path().join("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::copy(&srv.known_hosts, home.join(".ssh/known_hosts")).unwrap();
        let spec = format!("{}/repo", srv.sftp_url());
        let vars = vec![
            ("HOME".to_owned(), home.display().to_string()),
            ("VCB_SSH_KEY".to_owned(), srv.key().to_owned()),
        ];
        Some(Repo::with(env, spec, Place::Sftp(srv), vars))
    }

    /// A repository in a bucket of a fresh SeaweedFS cluster, or `None` (SKIP).
    pub fn s3(env: &Env) -> Option<Repo> {
        let c = testkit::seaweed::Cluster::start("vcb")?;
        let vars = c
            .env()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        Some(Repo::with(env, "s3://vcb/repo".into(), Place::S3(c), vars))
    }

    fn with(env: &Env, spec: String, place: Place, mut vars: Vec<(String, String)>) -> Repo {
        let pass = env.path("passphrase");
        std::fs::write(&pass, "test passphrase\n").unwrap();
        vars.push(("VCB_PASSWORD_FILE".into(), pass.display().to_string()));
        Repo { spec, place, vars }
    }

    /// The cluster, for S3 repositories.
    pub fn cluster(&mut self) -> &mut testkit::seaweed::Cluster {
        match &mut self.place {
            Place::S3(c) => c,
            _ => panic!("not an S3 repository"),
        }
    }

    /// The environment variables the tools get.
    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    /// `repo:<spec>`.
    pub fn target(&self) -> String {
        format!("repo:{}", self.spec)
    }

    /// Run a tool with this repository's environment.
    pub fn run(&self, env: &Env, tool: &str, args: &[&str]) -> Output {
        let vars: Vec<(&str, &str)> = self
            .vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.run_env(tool, args, &vars)
    }

    /// Run and require success; stdout.
    pub fn ok(&self, env: &Env, tool: &str, args: &[&str]) -> String {
        let out = self.run(env, tool, args);
        if !out.status.success() {
            self.dump();
            env.dump();
            panic!(
                "{tool} {args:?} failed: {}\n{}",
                out.status,
                text(&out.stderr)
            );
        }
        text(&out.stdout)
    }

    /// Run and require failure; stderr.
    pub fn fails(&self, env: &Env, tool: &str, args: &[&str]) -> String {
        let out = self.run(env, tool, args);
        assert!(
            !out.status.success(),
            "{tool} {args:?} succeeded:\n{}",
            text(&out.stdout)
        );
        text(&out.stderr)
    }

    /// `vcb repo init` with a cheap key (tests open repositories often).
    pub fn init(&self, env: &Env) {
        self.ok(
            env,
            "vcb",
            &[
                "repo",
                "init",
                &self.spec,
                "--kdf-memory-mib",
                "8",
                "--kdf-iterations",
                "1",
            ],
        );
    }

    /// `vcb repo <cmd> <spec> <rest> --json`, parsed.
    pub fn json(&self, env: &Env, cmd: &str, rest: &[&str]) -> serde_json::Value {
        let mut args = vec!["repo", cmd, self.spec.as_str()];
        args.extend_from_slice(rest);
        args.push("--json");
        serde_json::from_str(&self.ok(env, "vcb", &args)).unwrap()
    }

    /// The points, oldest first (`vcb repo list --json`).
    pub fn points(&self, env: &Env) -> Vec<serde_json::Value> {
        self.json(env, "list", &[]).as_array().unwrap().clone()
    }

    fn dump(&self) {
        match &self.place {
            Place::S3(c) => c.dump(),
            Place::Sftp(s) => s.dump("repository test failed"),
            Place::Local => {}
        }
    }
}
