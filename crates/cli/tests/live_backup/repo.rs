//! Issue 11 with a running guest: backups into a repository while the guest writes are
//! point-in-time images (the guest rewrites its whole small disk between backups, so
//! both store about the same).

use super::{host_with, layout, shutdown_and_check};
use crate::e2e::{catalog, text};
use crate::rt::{self, check_point_in_time, disk_blocks, TestVm, BLOCKS};
use std::time::Duration;

#[test]
fn issue_11_a_running_vm_backed_up_into_a_repository_is_point_in_time() {
    let Some(guest) = rt::guest() else { return };
    let t = TestVm::new(&guest, "live", layout(false));
    let env = host_with(&t);
    let pass = env.path("pass");
    std::fs::write(&pass, "live passphrase").unwrap();
    let vars = [("VCB_PASSWORD_FILE", pass.to_str().unwrap())];
    let repo = env.path("repo");
    let r = repo.to_str().unwrap();
    let out = env.run_env(
        "vcb",
        &[
            "repo",
            "init",
            r,
            "--kdf-memory-mib",
            "8",
            "--kdf-iterations",
            "1",
        ],
        &vars,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.ok("vcb", &["vm", "power-on", "live"]);
    let g = t.wait_guest("a full lap of writes", Duration::from_secs(120), |g| {
        g.last_seq >= Some(BLOCKS + 32)
    });
    let run = g.run().to_owned();
    let mut highs = Vec::new();
    let mut new_bytes = Vec::new();
    for i in 0..2 {
        let before = t.guest().last_seq.unwrap();
        let out = env.run_env(
            "vcbMounter",
            &["-a", "name:live", "-r", &format!("repo:{r}")],
            &vars,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let dir = env.path(&format!("exported{i}"));
        let spec = "live@0".to_owned();
        let out = env.run_env(
            "vcb",
            &["repo", "export", r, &spec, dir.to_str().unwrap()],
            &vars,
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let c = catalog(&dir);
        assert_eq!(c.state, vmx::PowerState::PoweredOn);
        let file = c.disks[0].filename.clone().unwrap();
        let high = check_point_in_time(&disk_blocks(&dir.join(&file)), &run);
        assert!(
            high >= before,
            "point {i} misses writes reported before it ({high} < {before})"
        );
        highs.push(high);
        let out = env.run_env("vcb", &["repo", "show", r, &spec, "--json"], &vars);
        let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        new_bytes.push(shown["stats"]["new_bytes"].as_u64().unwrap());
    }
    eprintln!(
        "figure: running VM into a repository: image seqs {highs:?}, new bytes {new_bytes:?}"
    );
    assert!(highs[0] < highs[1]);
    shutdown_and_check(&env, &t, &run, "live");
}
