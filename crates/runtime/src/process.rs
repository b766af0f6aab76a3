//! QEMU processes: finding the one that runs a VM, signalling it, waiting for it to end,
//! and choosing the accelerator.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::paths::VmFiles;

/// The pid QEMU recorded in the VM folder, if its pid file holds one.
pub(crate) fn read_pid(files: &VmFiles) -> Option<u32> {
    let text = std::fs::read_to_string(&files.pid).ok()?;
    text.trim().parse().ok().filter(|&p| p > 1)
}

/// Linux's `PF_KTHREAD` process flag (`include/linux/sched.h`).
const PF_KTHREAD: u64 = 0x0020_0000;

/// Whether `pid` is a live (or still exiting) QEMU whose working directory is the VM
/// folder. The folder check guards against a recycled pid: every vcb QEMU runs in its VM
/// folder.
///
/// A killed QEMU keeps its files (and image locks) until its last thread has exited, but
/// loses its command line and working directory earlier, and its main thread turns
/// zombie while other threads still run: such a process still counts. (Its pid cannot be
/// reused until it is gone.)
pub(crate) fn is_our_qemu(pid: u32, folder: &Path) -> bool {
    let proc = Path::new("/proc").join(pid.to_string());
    let Ok(stat) = std::fs::read_to_string(proc.join("stat")) else {
        return false;
    };
    // The fields after the parenthesised command name (which may hold spaces): state,
    // ppid, pgrp, session, tty_nr, tpgid, flags, ...
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let (Some(state), Some(flags)) = (fields.first(), fields.get(6)) else {
        return false;
    };
    if flags.parse::<u64>().is_ok_and(|f| f & PF_KTHREAD != 0) {
        return false;
    }
    if matches!(*state, "Z" | "X" | "x") {
        return std::fs::read_dir(proc.join("task")).map_or(0, Iterator::count) > 1;
    }
    let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
    let Ok(cwd) = std::fs::read_link(proc.join("cwd")) else {
        return true;
    };
    if cmdline.is_empty() {
        return true;
    }
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    let folder = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
    String::from_utf8_lossy(argv0).contains("qemu") && cwd == folder
}

/// The pid of the QEMU running this VM, if one does.
pub(crate) fn running_pid(files: &VmFiles) -> Option<u32> {
    read_pid(files).filter(|&pid| is_our_qemu(pid, &files.folder))
}

/// Sends `signal` to `pid`. Errors (the process is already gone) are ignored: callers
/// check the outcome by waiting for the process to disappear.
pub(crate) fn signal(pid: u32, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; pid is positive
    // (read_pid refuses 0 and 1), so this never signals a process group.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Waits up to `timeout` for `pid` to stop being this VM's QEMU. Returns whether it did.
pub(crate) fn wait_gone(pid: u32, folder: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_our_qemu(pid, folder) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the pid file and sockets a dead QEMU left behind.
pub(crate) fn remove_state_files(files: &VmFiles) {
    for f in [&files.pid, &files.qmp, &files.agent] {
        let _ = std::fs::remove_file(f);
    }
}

/// Whether KVM can be tried: the CPU advertises VT-x or AMD-V and /dev/kvm opens for
/// reading and writing. (On these machines /dev/kvm exists without VT-x, and guests die
/// with "KVM internal error", so the CPU flags are checked first.)
pub(crate) fn kvm_available() -> bool {
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_vt = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    has_vt
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_and_kernel_threads_are_not_a_qemu() {
        let me = std::process::id();
        assert!(!is_our_qemu(me, Path::new("/")));
        assert!(!is_our_qemu(u32::MAX - 1, Path::new("/")));
        // kthreadd (pid 2) in a full pid namespace; pid 2 in a container is no QEMU either.
        assert!(!is_our_qemu(2, Path::new("/")));
    }

    #[test]
    fn pid_files_must_hold_a_real_pid() {
        let dir = tempfile::tempdir().unwrap();
        let files = VmFiles::new(&dir.path().join("a.vmx"), None).unwrap();
        assert_eq!(read_pid(&files), None);
        for (text, want) in [
            ("1234\n", Some(1234)),
            ("1", None),
            ("0", None),
            ("x", None),
        ] {
            std::fs::write(&files.pid, text).unwrap();
            assert_eq!(read_pid(&files), want, "{text:?}");
        }
        remove_state_files(&files);
        assert!(!files.pid.exists());
    }
}
