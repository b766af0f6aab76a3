//! Quiesce hooks: executables run before the snapshot (pre-freeze) and after it (post-thaw).
//!
//! Hooks live in `<root>/hooks/pre-freeze.d/` and `<root>/hooks/post-thaw.d/` (host-wide,
//! run with the argument `pre-freeze` or `post-thaw`) and in the VM folder's
//! `backup-hooks/` (run at both stages, with the stage as argument). Like `run-parts`,
//! only executable regular files whose names do not start with `.` or end with `~` run,
//! pre-freeze in name order (host-wide first), post-thaw in reverse. Each gets
//! `VCB_VM_NAME`, `VCB_VM_UUID`, `VCB_VM_FOLDER` and `VCB_HOOK_STAGE` in its environment.
//! A failing pre-freeze hook aborts the backup before any snapshot exists.

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

/// The hooks to run at `stage`, in order.
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

/// Run one hook, waiting for it. Its stdout is discarded, its stderr kept for the error.
pub fn run_hook(hook: &Path, stage: Stage, env: &HookEnv) -> Result<()> {
    let mut attempt = 0;
    let out = loop {
        let run = Command::new(hook)
            .arg(stage.as_str())
            .env("VCB_VM_NAME", &env.vm_name)
            .env("VCB_VM_UUID", &env.vm_uuid)
            .env("VCB_VM_FOLDER", &env.vm_folder)
            .env("VCB_HOOK_STAGE", stage.as_str())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
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
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let text = text.trim();
    let stderr = if text.is_empty() {
        String::new()
    } else {
        format!(": {}", text.replace('\n', " "))
    };
    Err(Error::HookFailed {
        path: hook.to_path_buf(),
        status: out.status.to_string(),
        stderr,
    })
}

fn executables_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, "list hooks in", e)),
    };
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
