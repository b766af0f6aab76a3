//! Quiesce hooks: executables run before the snapshot (pre-freeze) and after it (post-thaw).
//!
//! Hooks live in `<root>/hooks/pre-freeze.d/` and `<root>/hooks/post-thaw.d/` (host-wide,
//! run with the argument `pre-freeze` or `post-thaw`) and in the VM folder's
//! `backup-hooks/` (run at both stages, with the stage as argument). Like `run-parts`,
//! only executable regular files whose names do not start with `.` or end with `~` run,
//! pre-freeze in name order (host-wide first), post-thaw in reverse. Each gets
//! `VCB_VM_NAME`, `VCB_VM_UUID`, `VCB_VM_FOLDER` and `VCB_HOOK_STAGE` in its environment.
//! A failing pre-freeze hook aborts the backup before any snapshot exists.
//!
//! Hooks run as the backup's user (often root), so like sshd's StrictModes a hook, or a
//! hook folder or any folder above it, that others can write or that someone other than
//! root or that user owns is refused. A hook gets [`HOOK_TIMEOUT`] to finish (its whole
//! process group is killed then) and at most [`MAX_HOOK_STDERR`] bytes of its stderr
//! are kept for the error; more is read and dropped so the hook never blocks on it.

use crate::error::{Error, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before the snapshot: flush and freeze applications.
    PreFreeze,
    /// After the snapshot: resume applications.
    PostThaw,
}

impl Stage {
    /// `pre-freeze` or `post-thaw`: the argument hooks get.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::PreFreeze => "pre-freeze",
            Stage::PostThaw => "post-thaw",
        }
    }
}

/// Who the hooks run for.
#[derive(Debug, Clone)]
pub struct HookEnv {
    /// The VM's display name.
    pub vm_name: String,
    /// The VM's BIOS UUID (empty when it has none).
    pub vm_uuid: String,
    /// The VM folder.
    pub vm_folder: PathBuf,
}

/// How long a hook may run.
pub const HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// How much of a hook's stderr is kept for the error message.
pub const MAX_HOOK_STDERR: usize = 4096;

/// The hooks to run at `stage`, in order.
///
/// # Errors
/// [`Error::Io`] listing a folder; [`Error::File`] (`Unsafe`) for a hook or folder
/// others could change.
pub fn hooks_for(root: &Path, vm_folder: &Path, stage: Stage) -> Result<Vec<PathBuf>> {
    let mut global = executables_in(&root.join("hooks").join(format!("{}.d", stage.as_str())))?;
    let mut local = executables_in(&vm_folder.join("backup-hooks"))?;
    Ok(match stage {
        Stage::PreFreeze => {
            global.append(&mut local);
            global
        }
        Stage::PostThaw => {
            local.reverse();
            global.reverse();
            local.append(&mut global);
            local
        }
    })
}

/// How often a hook that is "text file busy" is tried again (20 ms apart).
const TEXT_BUSY_RETRIES: u32 = 50;

/// Run one hook, waiting for it at most [`HOOK_TIMEOUT`]. Its stdout is discarded, its
/// stderr kept (bounded) for the error.
pub fn run_hook(hook: &Path, stage: Stage, env: &HookEnv) -> Result<()> {
    run_hook_with_timeout(hook, stage, env, HOOK_TIMEOUT)
}

/// [`run_hook`] with another timeout.
///
/// # Errors
/// [`Error::HookFailed`] (non-zero exit, killed at the timeout), [`Error::Io`].
pub fn run_hook_with_timeout(
    hook: &Path,
    stage: Stage,
    env: &HookEnv,
    timeout: std::time::Duration,
) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let mut attempt = 0;
    let mut child = loop {
        let run = Command::new(hook)
            .arg(stage.as_str())
            .env("VCB_VM_NAME", &env.vm_name)
            .env("VCB_VM_UUID", &env.vm_uuid)
            .env("VCB_VM_FOLDER", &env.vm_folder)
            .env("VCB_HOOK_STAGE", stage.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group: a timeout kills whatever the hook started too.
            .process_group(0)
            .spawn();
        match run {
            // ETXTBSY: the script is still open for writing somewhere — typically a
            // descriptor inherited by a child another thread forked while the script was
            // being written, gone once that child execs. Worth a few short retries.
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < TEXT_BUSY_RETRIES => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other.map_err(|e| Error::io(hook, "run hook", e))?,
        }
    };
    let stderr = child
        .stderr
        .take()
        .map(|pipe| std::thread::spawn(move || bounded_read(pipe)));
    let status =
        wait_or_kill(&mut child, timeout).map_err(|e| Error::io(hook, "wait for hook", e))?;
    let text = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    let status = match status {
        Some(s) if s.success() => return Ok(()),
        Some(s) => s.to_string(),
        None => format!("killed after {} s", timeout.as_secs()),
    };
    let text = String::from_utf8_lossy(&text);
    let text = text.trim();
    let stderr = if text.is_empty() {
        String::new()
    } else {
        format!(": {}", text.replace('\n', " "))
    };
    Err(Error::HookFailed {
        path: hook.to_path_buf(),
        status,
        stderr,
    })
}

/// Waits for `child` up to `timeout`; `None` when it had to be killed (with its group).
fn wait_or_kill(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if std::time::Instant::now() >= deadline {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill with a negative pid signals the process group the hook
                // leads (it was spawned with process_group(0)); no memory is involved.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
            child.wait()?;
            return Ok(None);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Reads `pipe` to its end, keeping the first [`MAX_HOOK_STDERR`] bytes.
fn bounded_read(mut pipe: impl std::io::Read) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        let room = MAX_HOOK_STDERR.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

fn executables_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, "list hooks in", e)),
    };
    fsio::check_private(dir)?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, "list hooks in", e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name.ends_with('~') {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            fsio::check_private(&path)?;
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(path: &Path, body: &str) {
        std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn order_and_environment() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let vm = t.path().join("vm");
        std::fs::create_dir_all(root.join("hooks/pre-freeze.d")).unwrap();
        std::fs::create_dir_all(vm.join("backup-hooks")).unwrap();
        let log = t.path().join("log");
        script(
            &root.join("hooks/pre-freeze.d/10-a"),
            &format!("echo a $1 $VCB_VM_NAME >> {}", log.display()),
        );
        script(
            &vm.join("backup-hooks/b"),
            &format!("echo b $1 $VCB_VM_UUID >> {}", log.display()),
        );
        std::fs::write(vm.join("backup-hooks/not-exec"), "x").unwrap();
        let env = HookEnv {
            vm_name: "vm37".into(),
            vm_uuid: "u-1".into(),
            vm_folder: vm.clone(),
        };
        for h in hooks_for(&root, &vm, Stage::PreFreeze).unwrap() {
            run_hook(&h, Stage::PreFreeze, &env).unwrap();
        }
        for h in hooks_for(&root, &vm, Stage::PostThaw).unwrap() {
            run_hook(&h, Stage::PostThaw, &env).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            "a pre-freeze vm37\nb pre-freeze u-1\nb post-thaw u-1\n"
        );
    }

    #[test]
    fn issue_10_hooks_time_out_keep_little_stderr_and_must_be_private() {
        let t = tempfile::tempdir().unwrap();
        let env = HookEnv {
            vm_name: "v".into(),
            vm_uuid: String::new(),
            vm_folder: t.path().into(),
        };
        let slow = t.path().join("slow");
        script(&slow, "sleep 600 & sleep 600");
        let e = run_hook_with_timeout(
            &slow,
            Stage::PreFreeze,
            &env,
            std::time::Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(e.to_string().contains("killed after"), "{e}");
        let loud = t.path().join("loud");
        script(&loud, "head -c 10000000 /dev/zero | tr '\\0' x >&2; exit 1");
        let e = run_hook(&loud, Stage::PreFreeze, &env).unwrap_err();
        assert!(
            e.to_string().len() < MAX_HOOK_STDERR + 500,
            "{}",
            e.to_string().len()
        );
        // A hook folder others can write is refused, and so is a hook in it.
        let vm = t.path().join("vm");
        std::fs::create_dir_all(vm.join("backup-hooks")).unwrap();
        script(&vm.join("backup-hooks/h"), "true");
        std::fs::set_permissions(&vm, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(hooks_for(t.path(), &vm, Stage::PreFreeze).unwrap().len(), 1);
        std::fs::set_permissions(
            vm.join("backup-hooks"),
            std::fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let e = hooks_for(t.path(), &vm, Stage::PreFreeze).unwrap_err();
        assert!(e.to_string().contains("writable by others"), "{e}");
        std::fs::set_permissions(
            vm.join("backup-hooks"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::set_permissions(
            vm.join("backup-hooks/h"),
            std::fs::Permissions::from_mode(0o775),
        )
        .unwrap();
        let e = hooks_for(t.path(), &vm, Stage::PreFreeze).unwrap_err();
        assert!(e.to_string().contains("writable by its group"), "{e}");
    }

    #[test]
    fn failure_carries_stderr() {
        let t = tempfile::tempdir().unwrap();
        let h = t.path().join("h");
        script(&h, "echo database busy >&2; exit 3");
        let env = HookEnv {
            vm_name: "v".into(),
            vm_uuid: String::new(),
            vm_folder: t.path().into(),
        };
        let e = run_hook(&h, Stage::PreFreeze, &env).unwrap_err();
        assert!(matches!(e, Error::HookFailed { .. }));
        assert!(e.to_string().contains("database busy"), "{e}");
    }
}
