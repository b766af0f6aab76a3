//! Throughput check used by `benches/sftp.sh`: upload (or download) one file through
//! vcb-sftp and print the rate.
//!
//! ```text
//! sftp_bench upload|download LOCAL_FILE sftp://user@host:port/remote/file \
//!     --key KEY --known-hosts FILE [--in-flight N] [--request-bytes N]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sftp_bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, local, url, rest @ ..] = args.as_slice() else {
        return Err("usage: sftp_bench upload|download LOCAL URL --key K --known-hosts F [--in-flight N] [--request-bytes N]".into());
    };
    let url = sftp::RemoteUrl::parse(url).map_err(|e| e.to_string())?;
    let mut opts = sftp::ConnectOptions::new(sftp::SshEnv::from_process());
    opts.use_ssh_config = false;
    for pair in rest.chunks(2) {
        let [flag, value] = pair else {
            return Err(format!("{pair:?}: flag without value"));
        };
        match flag.as_str() {
            "--key" => opts.identity_file = Some(PathBuf::from(value)),
            "--known-hosts" => opts.known_hosts = Some(PathBuf::from(value)),
            "--in-flight" => {
                opts.requests_in_flight = value.parse().map_err(|e| format!("{flag}: {e}"))?
            }
            "--request-bytes" => {
                opts.request_bytes = value.parse().map_err(|e| format!("{flag}: {e}"))?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let session = sftp::connect(&url, &opts).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let bytes = match mode.as_str() {
        "upload" => {
            let file = std::fs::File::open(local).map_err(|e| format!("{local}: {e}"))?;
            session.upload(
                std::io::BufReader::with_capacity(1 << 20, file),
                &url.path,
                &mut (),
            )
        }
        "download" => {
            let file = std::fs::File::create(local).map_err(|e| format!("{local}: {e}"))?;
            session.download(
                &url.path,
                std::io::BufWriter::with_capacity(1 << 20, file),
                &mut (),
            )
        }
        other => return Err(format!("unknown mode {other}")),
    }
    .map_err(|e| e.to_string())?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "vcb-sftp {mode}: {bytes} bytes in {secs:.2} s = {:.1} MB/s",
        bytes as f64 / secs / 1e6
    );
    Ok(())
}
