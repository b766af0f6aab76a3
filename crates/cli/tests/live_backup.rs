//! Backups of running VMs through the real tools (issue 6): a QEMU (TCG) guest built from
//! Debian packages keeps writing sequence-numbered 4 KiB blocks while vcbMounter backs it
//! up; every exported disk must be a point-in-time image and the VM must lose nothing.
//!
//! The guest, its VM folder and the consistency check are the runtime tests' own
//! (`crates/runtime/tests/it/util.rs`; `tests/guest` links to the runtime's guest
//! scripts). Each VM folder is made a datastore of a temporary host and registered there.
//! Figures are printed with a `figure:` prefix (`--nocapture` shows them).

#[path = "proxy_e2e/agent.rs"]
#[allow(dead_code)]
mod agent_util;
#[path = "backup_e2e/util.rs"]
#[allow(dead_code, unused_imports)]
mod e2e;
#[path = "live_backup/files.rs"]
mod files;
#[path = "live_backup/proxy.rs"]
mod proxy;
#[path = "live_backup/repo.rs"]
mod repo;
#[path = "../../runtime/tests/it/util.rs"]
#[allow(dead_code)]
mod rt;
#[path = "live_backup/safety.rs"]
mod safety;

use e2e as util;
use e2e::{catalog, registered, restore_with_catalog, retarget, text, Env};
use rt::{check_point_in_time, disk_blocks, qemu_img_check, Layout, TestVm, BLOCKS};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A host whose datastore `live` is the test VM's folder, with the VM registered.
fn host_with(t: &TestVm) -> Env {
    let env = Env::new();
    let mut h = env.host();
    h.add_datastore("live", t.dir.path()).unwrap();
    let vmx = t.vm.vmx_path().file_name().unwrap().to_str().unwrap();
    let dp = vmx::DatastorePath::new("live", vmx).unwrap();
    h.register_vm(&dp, None, None).unwrap();
    env
}

fn layout(agent: bool) -> Layout {
    Layout {
        controller: "pvscsi",
        format: vmdk::DiskFormat::Thin,
        agent,
    }
}

/// Runs `vcbVmName` against `env`'s host.
fn vm_name(env: &Env, spec: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_vcbVmName"))
        .args(["-s", spec, "--root"])
        .arg(&env.root)
        .env_remove("VCB_ROOT")
        .env("VCB_CONF", "")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

/// The seconds a line of `out` starting with `prefix` reports as `in N s`.
fn secs_after(out: &str, prefix: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line {prefix:?} in:\n{out}"));
    let (_, tail) = line.rsplit_once(" in ").unwrap();
    tail.trim_end_matches(" s").parse().unwrap()
}

/// One vcbMounter run into `dest` while the guest writes. Returns the exported image's
/// highest sequence number (after checking it is a point-in-time image of `run`, not
/// older than what the guest reported before the backup started), the tool's output and
/// the guest's writes per second during the backup.
fn backup_once(env: &Env, t: &TestVm, dest: &Path, run: &str, extra: &[&str]) -> Backup {
    backup_with(env, t, dest, run, extra, &[])
}

/// [`backup_once`] with extra environment variables for vcbMounter.
fn backup_with(
    env: &Env,
    t: &TestVm,
    dest: &Path,
    run: &str,
    extra: &[&str],
    vars: &[(&str, &str)],
) -> Backup {
    let before = t.guest().last_seq.unwrap();
    let started = Instant::now();
    let mut args = vec!["-a", "name:live", "-r", dest.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = env.run_env("vcbMounter", &args, vars);
    assert!(
        out.status.success(),
        "vcbMounter failed:\n{}",
        text(&out.stderr)
    );
    let out = text(&out.stdout);
    let secs = started.elapsed().as_secs_f64();
    let rate = (t.guest().last_seq.unwrap() - before) as f64 / secs;
    let c = catalog(dest);
    assert_eq!(c.state, vmx::PowerState::PoweredOn);
    let file = c.disks[0].filename.clone().unwrap();
    let blocks = disk_blocks(&dest.join(&file));
    let high = check_point_in_time(&blocks, run);
    assert!(
        high >= before,
        "the backup misses writes reported before it started ({high} < {before})"
    );
    Backup {
        high,
        out,
        rate,
        secs,
        quiesced: c.quiesced,
    }
}

struct Backup {
    high: u64,
    out: String,
    /// Guest writes per second while the tool ran.
    rate: f64,
    /// How long the tool ran.
    secs: f64,
    quiesced: Option<bool>,
}

/// The files of the VM folder whose names look like redo logs (`NAME-000001.vmdk`).
fn redo_logs(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("-00000"))
        .collect()
}

/// Shuts the guest down through the CLI and checks its disk holds every write it
/// reported, and is clean.
fn shutdown_and_check(env: &Env, t: &TestVm, run: &str, spec: &str) {
    let out = env.ok("vcb", &["vm", "shutdown", spec, "--timeout", "120"]);
    assert!(out.starts_with("Shut down live in "), "{out}");
    let g = t.guest();
    let stopped = g.stopped.expect("the guest reported its last write");
    assert_eq!(g.runs.len(), 1, "the guest rebooted");
    let high = check_point_in_time(&disk_blocks(&t.disk), run);
    assert_eq!(
        high, stopped,
        "the VM's disk lacks writes the guest reported"
    );
    qemu_img_check(&t.disk);
    assert!(
        redo_logs(t.dir.path()).is_empty(),
        "{:?}",
        redo_logs(t.dir.path())
    );
}

#[test]
fn five_backups_while_the_guest_writes_lose_nothing() {
    let Some(guest) = rt::guest() else { return };
    let t = TestVm::new(&guest, "live", layout(false));
    let env = host_with(&t);
    let out = env.ok("vcb", &["vm", "power-on", "live"]);
    assert!(out.starts_with("Powered on live in "), "{out}");
    let g = t.wait_guest("a full lap of writes", Duration::from_secs(120), |g| {
        g.last_seq >= Some(BLOCKS + 32)
    });
    let run = g.run().to_owned();
    let list = env.ok("vcb", &["vm", "list"]);
    assert!(list.contains("poweredOn"), "{list}");
    assert!(vm_name(&env, "powerstate:on").contains("name:live"));
    assert_eq!(vm_name(&env, "powerstate:off"), "");
    let idle = rt::write_rate(&t, Duration::from_secs(3));

    let mut highs = Vec::new();
    let (mut busy_writes, mut busy_secs) = (0.0, 0.0);
    for i in 1..=5 {
        let dest = env.path(&format!("b{i}"));
        let b = backup_once(&env, &t, &dest, &run, &[]);
        assert!(
            b.out.contains("Not quiescing live (no guest agent)"),
            "{}",
            b.out
        );
        assert_eq!(b.quiesced, Some(false));
        eprintln!(
            "figure: backup {i}: snapshot {:.2} s, commit {:.2} s, image seq {}, guest writes/s during the backup {:.0} (idle {idle:.0})",
            secs_after(&b.out, "Took the backup snapshot"),
            secs_after(&b.out, "Removed the backup snapshot"),
            b.high,
            b.rate
        );
        highs.push(b.high);
        busy_writes += b.rate * b.secs;
        busy_secs += b.secs;
        // The VM runs on its own disk again, with no redo log left.
        assert_eq!(
            t.vm.node_chain("scsi0:0".parse().unwrap()).unwrap(),
            std::slice::from_ref(&t.disk)
        );
    }
    assert!(highs.windows(2).all(|w| w[0] < w[1]), "{highs:?}");
    eprintln!(
        "figure: guest writes/s: {idle:.0} with no backup, {:.0} over the five backups ({busy_secs:.1} s)",
        busy_writes / busy_secs
    );
    shutdown_and_check(&env, &t, &run, "live");
    let list = env.ok("vcb", &["vm", "list"]);
    assert!(list.contains("poweredOff"), "{list}");
}

#[test]
fn quiesced_backup_is_at_the_freeze_point() {
    let Some(guest) = rt::guest() else { return };
    let t = TestVm::new(&guest, "live", layout(true));
    let env = host_with(&t);
    env.ok("vcb", &["vm", "power-on", "live"]);
    let g = t.wait_guest("agent and a lap of writes", Duration::from_secs(120), |g| {
        g.agent && g.last_seq >= Some(BLOCKS + 16)
    });
    let run = g.run().to_owned();
    // qemu-ga answers once it has opened its port: the first quiesce may find no agent.
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.vm.guest_ips().ok().flatten().is_none() {
        assert!(Instant::now() < deadline, "the guest agent never answered");
        std::thread::sleep(Duration::from_millis(200));
    }

    let b = backup_once(&env, &t, &env.path("q1"), &run, &[]);
    assert!(
        b.out.contains("Quiesced live through the guest agent"),
        "{}",
        b.out
    );
    assert!(b.out.contains("Thawed live"), "{}", b.out);
    assert_eq!(b.quiesced, Some(true), "catalog");
    let g = t.wait_guest("frozen and thawed lines", Duration::from_secs(10), |g| {
        g.frozen.len() == 1 && g.thawed == 1
    });
    assert_eq!(
        b.high, g.frozen[0],
        "the quiesced image is not at the freeze point"
    );

    // --no-quiesce: no freeze, and the catalog says so.
    let b = backup_once(&env, &t, &env.path("q2"), &run, &["--no-quiesce"]);
    assert_eq!(b.quiesced, Some(false));
    assert!(b.out.contains("quiescing turned off"), "{}", b.out);
    assert_eq!(t.guest().frozen.len(), 1);

    // vcbSnapAll finds the running VM by power state and quiesces it too.
    let root = env.path("snapall");
    std::fs::create_dir(&root).unwrap();
    env.ok(
        "vcbSnapAll",
        &["-a", "powerstate:on", "-r", root.to_str().unwrap()],
    );
    let c = catalog(&root.join("live"));
    assert_eq!(c.quiesced, Some(true));
    let file = c.disks[0].filename.clone().unwrap();
    let high = check_point_in_time(&disk_blocks(&root.join("live").join(file)), &run);
    let g = t.wait_guest("second freeze", Duration::from_secs(10), |g| {
        g.frozen.len() == 2 && g.thawed == 2
    });
    assert_eq!(high, g.frozen[1]);

    // A backup killed while the guest is frozen (its watchdog dies with it): the next
    // backup thaws the guest first, then quiesces it again.
    let dest = env.path("killed-frozen");
    let mut child = env
        .command(
            "vcbMounter",
            &["-a", "name:live", "-r", dest.to_str().unwrap()],
        )
        .env("VCB_TEST_PAUSE_WHILE_FROZEN", "120")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    t.wait_guest("the third freeze", Duration::from_secs(60), |g| {
        g.frozen.len() == 3
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(t.guest().thawed, 2, "the guest is still frozen");
    let b = backup_once(&env, &t, &env.path("q3"), &run, &[]);
    assert!(b.out.contains("left frozen"), "{}", b.out);
    assert_eq!(b.quiesced, Some(true));
    let g = t.wait_guest("thawed twice more", Duration::from_secs(10), |g| {
        g.frozen.len() == 4 && g.thawed == 4
    });
    assert_eq!(b.high, g.frozen[3]);

    // A freeze that outlasts its timeout: the watchdog thaws the guest before the
    // snapshot, and the backup says it is not quiesced.
    let b = backup_with(
        &env,
        &t,
        &env.path("q4"),
        &run,
        &["--quiesce-timeout", "1"],
        &[("VCB_TEST_PAUSE_WHILE_FROZEN", "3")],
    );
    assert_eq!(b.quiesced, Some(false));
    assert!(b.out.contains("Thawed live (by the watchdog"), "{}", b.out);
    t.wait_guest("the watchdog's thaw", Duration::from_secs(10), |g| {
        g.frozen.len() == 5 && g.thawed == 5
    });

    let err = env.fails("vcb", &["vm", "power-on", "live"]);
    assert!(err.contains("running"), "{err}");
    // Reset: the guest boots again (a new run).
    let out = env.ok("vcb", &["vm", "reset", "live", "--wait"]);
    assert!(out.starts_with("Reset live in "), "{out}");
    t.wait_guest("a new boot", Duration::from_secs(120), |g| {
        g.runs.len() == 2
    });
    let out = env.ok("vcb", &["vm", "power-off", "live"]);
    assert!(out.starts_with("Powered off live in "), "{out}");
    qemu_img_check(&t.disk);
    assert!(redo_logs(t.dir.path()).is_empty());
}

#[test]
fn killed_backup_is_committed_live_by_the_rerun() {
    let Some(guest) = rt::guest() else { return };
    let t = TestVm::new(&guest, "live", layout(false));
    let env = host_with(&t);
    env.ok("vcb", &["vm", "power-on", "live"]);
    let g = t.wait_guest("a lap of writes", Duration::from_secs(120), |g| {
        g.last_seq >= Some(BLOCKS + 16)
    });
    let run = g.run().to_owned();
    let node = "scsi0:0".parse().unwrap();

    let dest = env.path("killed");
    let mut child = env
        .command(
            "vcbMounter",
            &["-a", "name:live", "-r", dest.to_str().unwrap()],
        )
        .env("VCB_TEST_PAUSE_AFTER_SNAPSHOT", "120")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dest.join("live.vmx").exists() {
        assert!(
            Instant::now() < deadline,
            "the backup did not reach the export"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // The VM runs on, writing into the redo log the dead backup left.
    let chain = t.vm.node_chain(node).unwrap();
    assert_eq!(chain.len(), 2, "{chain:?}");
    assert_eq!(chain[1], t.disk);
    let at_kill = t.guest().last_seq.unwrap();
    t.wait_guest("writes after the kill", Duration::from_secs(30), |g| {
        g.last_seq >= Some(at_kill + 32)
    });

    // The rerun commits the leftover redo log live, then backs up consistently.
    let b = backup_once(&env, &t, &env.path("rerun"), &run, &[]);
    assert!(b.out.contains("interrupted backup"), "{}", b.out);
    assert_eq!(
        t.vm.node_chain(node).unwrap(),
        std::slice::from_ref(&t.disk)
    );
    assert!(matches!(
        t.vm.status().unwrap(),
        runtime::RuntimeState::Running { .. }
    ));
    shutdown_and_check(&env, &t, &run, "live");
}

#[test]
fn suspended_backup_restored_elsewhere_resumes() {
    let Some(guest) = rt::guest() else { return };
    let t = TestVm::new(&guest, "live", layout(false));
    let env = host_with(&t);
    env.ok("vcb", &["vm", "power-on", "live"]);
    let g = t.wait_guest("a lap of writes", Duration::from_secs(120), |g| {
        g.last_seq >= Some(BLOCKS + 16)
    });
    let run = g.run().to_owned();
    let out = env.ok("vcb", &["vm", "suspend", "live"]);
    assert!(out.starts_with("Suspended live to "), "{out}");
    let at_suspend = t.guest().last_seq.unwrap();
    assert!(env.ok("vcb", &["vm", "show", "live"]).contains("suspended"));
    assert!(vm_name(&env, "powerstate:suspended").contains("name:live"));

    let dest = env.path("b");
    env.ok(
        "vcbMounter",
        &["-a", "name:live", "-r", dest.to_str().unwrap()],
    );
    let mut c = catalog(&dest);
    assert_eq!(c.state, vmx::PowerState::Suspended);
    assert!(c.file("live.vmss").is_some(), "{:?}", c.files);
    assert_eq!(c.quiesced, Some(false));

    // Restore into another datastore under another file name.
    let mut h = env.host();
    let ds2 = env.path("ds2");
    std::fs::create_dir(&ds2).unwrap();
    h.add_datastore("ds2", &ds2).unwrap();
    let folder = vmx::DatastorePath::new("ds2", "copy/").unwrap();
    retarget(&mut c, &folder, "copy", &["copy.vmdk"]);
    restore_with_catalog(&env, "vcbRestore", &dest, &c);
    let h = env.host();
    let copy = registered(&env, "[ds2] copy/copy.vmx");
    assert_eq!(copy.power_state(&h), host::PowerState::Suspended);
    let spec = format!("moref:{}", copy.moref);
    let copy_dir: PathBuf = copy.dir.clone();
    // The guest boots a kernel named relative to its folder (`vcb.kernel`); like an ISO,
    // it is not part of the backup: the admin provides it beside the copy.
    for f in ["vmlinuz", "initrd.gz"] {
        std::fs::hard_link(t.dir.path().join(f), copy_dir.join(f)).unwrap();
    }

    // Resume the copy: the same run goes on from the same sequence number.
    let out = env.ok("vcb", &["vm", "resume", &spec]);
    assert!(out.starts_with("Resumed live in "), "{out}");
    let serial = copy_dir.join("serial.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    let g = loop {
        let g = rt::Guest::parse(&std::fs::read_to_string(&serial).unwrap_or_default());
        if g.last_seq >= Some(at_suspend + 48) {
            break g;
        }
        assert!(Instant::now() < deadline, "the resumed copy does not write");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(g.runs.is_empty(), "the copy rebooted instead of resuming");
    assert_eq!(
        g.progress.first(),
        Some(&(at_suspend + 16)),
        "{:?}",
        g.progress
    );
    for w in g.progress.windows(2) {
        assert_eq!(w[1], w[0] + 16, "sequence broken around {}", w[0]);
    }
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(
        text.contains(&format!("run={run} ")),
        "another run wrote:\n{text}"
    );

    env.ok("vcb", &["vm", "shutdown", &spec, "--timeout", "120"]);
    let g = rt::Guest::parse(&std::fs::read_to_string(&serial).unwrap());
    let copy_disk = copy.disks(&h).unwrap()[0].path.clone();
    let high = check_point_in_time(&disk_blocks(&copy_disk), &run);
    assert_eq!(Some(high), g.stopped);
    qemu_img_check(&copy_disk);
    // The original stays suspended, untouched.
    let original = h
        .vms()
        .0
        .into_iter()
        .find(|v| v.vmx.to_string() == "[live] live.vmx")
        .unwrap();
    assert_eq!(original.power_state(&h), host::PowerState::Suspended);
    // ... and resumes too: the backup's snapshot and commit left its disks as they were.
    let spec = format!("moref:{}", original.moref);
    let out = env.ok("vcb", &["vm", "power-on", &spec]);
    assert!(out.starts_with("Resumed live in "), "{out}");
    let g = t.wait_guest("the original writing again", Duration::from_secs(60), |g| {
        g.last_seq >= Some(at_suspend + 32)
    });
    assert_eq!(g.runs.len(), 1, "the original rebooted instead of resuming");
    for w in g.progress.windows(2) {
        assert_eq!(w[1], w[0] + 16, "sequence broken around {}", w[0]);
    }
    shutdown_and_check(&env, &t, &run, &spec);
}

#[test]
fn power_commands_refuse_wrong_states_and_a_busy_vm() {
    let env = Env::new();
    let vm = env.vm("off1", &[(1 << 20, vmdk::DiskFormat::Thin)], 3);
    for cmd in ["power-off", "shutdown", "reset", "suspend", "resume"] {
        let err = env.fails("vcb", &["vm", cmd, "off1"]);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("off1") && err.contains("poweredOff"), "{err}");
    }
    let _held = vm.lock(host::LockMode::NoWait).unwrap();
    let err = env.fails("vcb", &["vm", "power-on", "off1"]);
    assert!(err.contains("busy"), "{err}");
}

/// Figures for the closing note (run with `--ignored --nocapture`): the guest's write
/// rate in alternating windows with no backup and with vcbMounter backing it up back to
/// back, and the snapshot and commit durations the tool reports.
#[test]
#[ignore = "figures only; about a minute"]
fn figures_guest_write_rate_with_and_without_backups() {
    let Some(guest) = rt::guest() else { return };
    let t = TestVm::new(&guest, "live", layout(false));
    let env = host_with(&t);
    env.ok("vcb", &["vm", "power-on", "live"]);
    let g = t.wait_guest("a lap of writes", Duration::from_secs(120), |g| {
        g.last_seq >= Some(BLOCKS + 16)
    });
    let run = g.run().to_owned();
    let window = Duration::from_secs(8);
    let (mut n, mut snaps, mut commits) = (0, Vec::new(), Vec::new());
    for round in 1..=2 {
        let idle = rt::write_rate(&t, window);
        let (started, s0) = (Instant::now(), t.guest().last_seq.unwrap());
        let mut backups = 0;
        while started.elapsed() < window {
            n += 1;
            let dest = env.path(&format!("f{n}"));
            let out = env.ok(
                "vcbMounter",
                &["-a", "name:live", "-r", dest.to_str().unwrap()],
            );
            snaps.push(secs_after(&out, "Took the backup snapshot"));
            commits.push(secs_after(&out, "Removed the backup snapshot"));
            backups += 1;
        }
        let busy = (t.guest().last_seq.unwrap() - s0) as f64 / started.elapsed().as_secs_f64();
        eprintln!(
            "figure: round {round}: guest writes/s {idle:.0} with no backup, {busy:.0} during {backups} back-to-back backups"
        );
        check_point_in_time(
            &disk_blocks(&env.path(&format!("f{n}")).join("scsi0-0-0-live.vmdk")),
            &run,
        );
    }
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2], v[v.len() - 1])
    };
    let (a, b, c) = stats(&mut snaps);
    let (d, e, f) = stats(&mut commits);
    eprintln!(
        "figure: {n} backups: snapshot min/median/max {a:.2}/{b:.2}/{c:.2} s, live commit {d:.2}/{e:.2}/{f:.2} s"
    );
    shutdown_and_check(&env, &t, &run, "live");
}

/// Without QEMU: a suspended VM restored under another .vmx name gets its state file
/// renamed with it (`<new stem>.vmss`, where a resume looks), and counts as suspended.
#[test]
fn restored_state_file_follows_the_new_vmx_name() {
    let env = Env::new();
    let vm = env.vm("sus", &[(1 << 20, vmdk::DiskFormat::Thin)], 2);
    std::fs::write(vm.dir.join("sus.vmss"), b"saved memory").unwrap();
    let dest = env.path("b");
    env.ok(
        "vcbMounter",
        &["-a", "name:sus", "-r", dest.to_str().unwrap()],
    );
    let mut c = catalog(&dest);
    let folder = vmx::DatastorePath::new("datastore1", "other/").unwrap();
    retarget(&mut c, &folder, "other", &["other.vmdk"]);
    restore_with_catalog(&env, "vcbRestore", &dest, &c);
    let h = env.host();
    let copy = registered(&env, "[datastore1] other/other.vmx");
    assert_eq!(
        std::fs::read(copy.dir.join("other.vmss")).unwrap(),
        b"saved memory"
    );
    assert!(!copy.dir.join("sus.vmss").exists());
    assert_eq!(copy.power_state(&h), host::PowerState::Suspended);
    assert_eq!(
        copy.runtime(&h).files().unwrap().vmss,
        copy.dir.join("other.vmss")
    );
}
#[path = "live_backup/tracking.rs"]
mod tracking;
