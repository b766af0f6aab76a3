//! [`Vm`]: one VM folder and its QEMU process; power state and power operations.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmx::VmConfig;

use crate::cmdline::{self, Accel, BuildInput, QemuCommand};
use crate::error::{Error, Result};
use crate::paths::VmFiles;
use crate::process;
use crate::qmp::Qmp;
use crate::vmlog;

/// The default QEMU program.
pub const QEMU_PROGRAM: &str = "qemu-system-x86_64";

/// How long a power-off waits for QEMU to exit after `quit` before killing it.
pub(crate) const QUIT_GRACE: Duration = Duration::from_secs(10);

/// Whether a VM's QEMU runs, as seen from its folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeState {
    /// No QEMU runs the VM and there is no suspend file.
    Off,
    /// QEMU runs the VM.
    Running {
        /// QEMU's process id.
        pid: u32,
    },
    /// No QEMU runs the VM, and its memory state waits in a suspend file.
    Suspended {
        /// The suspend file.
        vmss: PathBuf,
    },
}

/// Which accelerator to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    /// KVM when the CPU has VT-x/AMD-V and /dev/kvm opens (falling back to TCG when the
    /// guest fails under KVM at start), else TCG.
    #[default]
    Auto,
    /// KVM only.
    Kvm,
    /// TCG only.
    Tcg,
}

/// Options for [`Vm::power_on`] and [`Vm::resume`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PowerOnOptions {
    /// The accelerator.
    pub accel: AccelChoice,
    /// How long QEMU may take to open its monitor socket.
    pub start_timeout: Duration,
    /// Extra QEMU arguments appended to the generated ones.
    pub extra_args: Vec<String>,
}

impl Default for PowerOnOptions {
    fn default() -> Self {
        PowerOnOptions {
            accel: AccelChoice::Auto,
            start_timeout: Duration::from_secs(30),
            extra_args: Vec::new(),
        }
    }
}

/// What [`Vm::power_on`] or [`Vm::resume`] did.
#[derive(Debug, Clone)]
pub struct PowerOnReport {
    /// QEMU's process id.
    pub pid: u32,
    /// The command line QEMU runs with (its `warnings` list ignored settings).
    pub command: QemuCommand,
    /// Why KVM was given up for TCG, when it was.
    pub kvm_fallback: Option<String>,
    /// From the call to the VM running.
    pub elapsed: Duration,
}

/// A VM folder with a .vmx, and the QEMU process that runs it, if any.
///
/// The handle holds no connection or lock: each call reads the .vmx, finds QEMU through
/// the pid file and sockets in the folder, and talks to it over a fresh QMP connection,
/// so any number of handles (in any number of processes) can address the same VM. The
/// caller serialises operations that change the VM (the host layer's VM lock).
#[derive(Debug, Clone)]
pub struct Vm {
    pub(crate) vmx: PathBuf,
    pub(crate) datastores: BTreeMap<String, PathBuf>,
    pub(crate) policy: Option<std::sync::Arc<dyn crate::paths::PathPolicy>>,
    pub(crate) program: String,
}

impl Vm {
    /// The VM whose configuration is `vmx` (its folder is the file's folder).
    pub fn new(vmx: impl Into<PathBuf>) -> Vm {
        Vm {
            vmx: vmx.into(),
            datastores: BTreeMap::new(),
            policy: None,
            program: QEMU_PROGRAM.to_owned(),
        }
    }

    /// Resolves `[datastore] path` file names through `datastores` (name → folder).
    pub fn with_datastores(mut self, datastores: BTreeMap<String, PathBuf>) -> Vm {
        self.datastores = datastores;
        self
    }

    /// Resolves every file name of the .vmx through `policy` (the host's confinement
    /// rule) instead of the built-in folder-only rule.
    pub fn with_policy(mut self, policy: std::sync::Arc<dyn crate::paths::PathPolicy>) -> Vm {
        self.policy = Some(policy);
        self
    }

    /// Runs `program` instead of [`QEMU_PROGRAM`].
    pub fn with_qemu_program(mut self, program: impl Into<String>) -> Vm {
        self.program = program.into();
        self
    }

    /// The .vmx file.
    pub fn vmx_path(&self) -> &Path {
        &self.vmx
    }

    /// Reads the .vmx.
    ///
    /// # Errors
    /// [`Error::Io`], [`Error::Vmx`].
    pub fn config(&self) -> Result<VmConfig> {
        let text = std::fs::read(&self.vmx).map_err(|e| Error::io(&self.vmx, "read", e))?;
        let vmx_err = |source| Error::Vmx {
            path: self.vmx.clone(),
            source,
        };
        VmConfig::from_dict(&vmx::Dict::parse_bytes(&text).map_err(vmx_err)?).map_err(vmx_err)
    }

    /// The runtime's files for this VM.
    ///
    /// # Errors
    /// As for [`config`](Vm::config), plus an unresolvable `suspend.Directory`.
    pub fn files(&self) -> Result<VmFiles> {
        VmFiles::locate(
            &self.vmx,
            Some(&self.config()?),
            &self.datastores,
            self.policy.as_deref(),
        )
    }

    /// The QEMU command line [`power_on`](Vm::power_on) would run, with the accelerator
    /// `opts` selects (no fallback).
    ///
    /// # Errors
    /// [`Error::Unsupported`] for settings that have no QEMU equivalent; .vmx errors.
    pub fn command_line(&self, opts: &PowerOnOptions) -> Result<QemuCommand> {
        let accel = match opts.accel {
            AccelChoice::Auto if process::kvm_available() => Accel::Kvm,
            AccelChoice::Kvm => Accel::Kvm,
            _ => Accel::Tcg,
        };
        self.build(accel, false, opts)
    }

    pub(crate) fn build(
        &self,
        accel: Accel,
        incoming: bool,
        opts: &PowerOnOptions,
    ) -> Result<QemuCommand> {
        let cfg = self.config()?;
        let files = VmFiles::locate(
            &self.vmx,
            Some(&cfg),
            &self.datastores,
            self.policy.as_deref(),
        )?;
        let input = BuildInput {
            files: &files,
            datastores: &self.datastores,
            policy: self.policy.as_deref(),
            program: &self.program,
            accel,
            incoming,
            extra_args: &opts.extra_args,
        };
        let mut command = cmdline::build(&cfg, &input)?;
        if self.tracks_changes() {
            // Tracked disks get their dirty bitmaps before the guest runs (a resume adds
            // them before its `cont`), and a guest's own power-off leaves QEMU paused so
            // the bitmaps can still be read.
            if !incoming {
                command.args.push("-S".into());
            }
            command
                .args
                .extend(["-action".into(), "shutdown=pause".into()]);
        }
        Ok(command)
    }

    /// The VM's power state. A QEMU that died (killed, crashed) is reported as off, and
    /// the pid file and sockets it left are removed.
    ///
    /// # Errors
    /// .vmx errors (the suspend folder comes from it).
    pub fn status(&self) -> Result<RuntimeState> {
        let files = self.files()?;
        if let Some(pid) = process::running_pid(&files) {
            if !self.end_if_shut_down(&files, pid) {
                return Ok(RuntimeState::Running { pid });
            }
        }
        if files.pid.exists() || files.qmp.exists() || files.agent.exists() {
            vmlog::append(
                &files.log,
                "vcb",
                "QEMU is gone; removing its stale pid file and sockets",
            );
            process::remove_state_files(&files);
        }
        if files.vmss.exists() {
            return Ok(RuntimeState::Suspended { vmss: files.vmss });
        }
        Ok(RuntimeState::Off)
    }

    /// The pid of the running QEMU, or [`Error::NotRunning`].
    pub(crate) fn running(&self, files: &VmFiles) -> Result<u32> {
        process::running_pid(files).ok_or_else(|| Error::NotRunning {
            vmx: self.vmx.clone(),
        })
    }

    /// A QMP connection to the running VM, logging events to `vmware.log`.
    ///
    /// # Errors
    /// [`Error::NotRunning`]; connection errors.
    pub fn qmp(&self) -> Result<Qmp> {
        let files = self.files()?;
        self.running(&files)?;
        let mut q = Qmp::connect(&files.qmp, crate::qmp::COMMAND_TIMEOUT)?;
        q.log_events_to(&files.log);
        Ok(q)
    }

    /// Powers the VM on: builds the command line from the .vmx, starts QEMU detached (its
    /// own process group, output to `vmware.log`) and waits until its monitor answers.
    /// A suspended VM is resumed instead, as VMware does.
    ///
    /// # Errors
    /// [`Error::AlreadyRunning`]; [`Error::Unsupported`]; [`Error::Spawn`];
    /// [`Error::StartFailed`] with QEMU's output.
    pub fn power_on(&self, opts: &PowerOnOptions) -> Result<PowerOnReport> {
        let started = Instant::now();
        match self.status()? {
            RuntimeState::Running { pid } => {
                return Err(Error::AlreadyRunning {
                    vmx: self.vmx.clone(),
                    pid,
                })
            }
            RuntimeState::Suspended { .. } => return self.resume(opts),
            RuntimeState::Off => {}
        }
        let files = self.files()?;
        let mut command = self.command_line(opts)?;
        prepare_efi_vars(&command)?;
        vmlog::append(&files.log, "vcb", "power on");
        let mut kvm_fallback = None;
        let pid = match self.start(&files, &command, opts) {
            Ok((pid, mut qmp))
                if command.accel == Accel::Kvm && opts.accel == AccelChoice::Auto =>
            {
                match kvm_trouble(&mut qmp, pid, &files) {
                    None => pid,
                    Some(why) => {
                        self.kill(&files, pid);
                        vmlog::append(
                            &files.log,
                            "vcb",
                            &format!("KVM failed ({why}); retrying with TCG"),
                        );
                        kvm_fallback = Some(why);
                        command = self.build(Accel::Tcg, false, opts)?;
                        self.start(&files, &command, opts)?.0
                    }
                }
            }
            Err(e) if command.accel == Accel::Kvm && opts.accel == AccelChoice::Auto => {
                vmlog::append(
                    &files.log,
                    "vcb",
                    &format!("KVM failed ({e}); retrying with TCG"),
                );
                kvm_fallback = Some(e.to_string());
                command = self.build(Accel::Tcg, false, opts)?;
                self.start(&files, &command, opts)?.0
            }
            other => other?.0,
        };
        Ok(PowerOnReport {
            pid,
            command,
            kvm_fallback,
            elapsed: started.elapsed(),
        })
    }

    /// Starts QEMU and waits for its monitor. Returns the pid and a QMP connection.
    pub(crate) fn start(
        &self,
        files: &VmFiles,
        command: &QemuCommand,
        opts: &PowerOnOptions,
    ) -> Result<(u32, Qmp)> {
        process::remove_state_files(files);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&files.log)
            .map_err(|e| Error::io(&files.log, "open", e))?;
        vmlog::append(
            &files.log,
            "vcb",
            &format!("starting {}", command.to_shell()),
        );
        let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let log2 = log
            .try_clone()
            .map_err(|e| Error::io(&files.log, "dup", e))?;
        let mut child = Command::new(&command.program)
            .args(&command.args)
            .current_dir(&files.folder)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(|e| Error::Spawn {
                program: command.program.clone(),
                source: e,
            })?;
        let failed = |status: String| Error::StartFailed {
            vmx: self.vmx.clone(),
            command: command.to_shell(),
            status,
            output: vmlog::tail_since(&files.log, offset),
        };
        let deadline = Instant::now() + opts.start_timeout;
        let qmp = loop {
            if let Ok(Some(status)) = child.try_wait() {
                process::remove_state_files(files);
                return Err(failed(status.to_string()));
            }
            if files.qmp.exists() {
                if let Ok(mut q) = Qmp::connect(&files.qmp, Duration::from_secs(5)) {
                    q.log_events_to(&files.log);
                    break q;
                }
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                process::remove_state_files(files);
                return Err(failed(format!(
                    "no answer on {} after {:?}",
                    files.qmp.display(),
                    opts.start_timeout
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let pid = child.id();
        // QEMU outlives this process; while this process lives, a thread reaps it so a
        // powered-off VM does not linger as a zombie that looks alive.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let mut qmp = qmp;
        if command.args.iter().any(|a| a == "-S") {
            // Started paused for change tracking: bitmaps first, then the guest.
            self.begin_tracking(&mut qmp, pid)?;
            qmp.execute("cont", Value::Null)?;
        }
        vmlog::append(
            &files.log,
            "vcb",
            &format!("QEMU {} running as pid {pid}", qmp.version()),
        );
        Ok((pid, qmp))
    }

    /// Resets the VM (`system_reset`): the guest reboots at once.
    ///
    /// # Errors
    /// [`Error::NotRunning`]; QMP errors.
    pub fn reset(&self) -> Result<()> {
        let mut q = self.qmp()?;
        vmlog::append(&self.files()?.log, "vcb", "reset");
        q.execute("system_reset", Value::Null)?;
        Ok(())
    }
}

/// After a KVM start: a guest that KVM cannot run stops with `internal-error` (or QEMU
/// exits) within moments. Returns why KVM is unusable, or `None` when the guest runs.
fn kvm_trouble(qmp: &mut Qmp, pid: u32, files: &VmFiles) -> Option<String> {
    std::thread::sleep(Duration::from_millis(1500));
    if !process::is_our_qemu(pid, &files.folder) {
        return Some("QEMU exited".into());
    }
    match qmp.execute("query-status", json!(null)) {
        Ok(s) if s["status"] == "internal-error" => {
            Some("guest stopped with internal-error".into())
        }
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}

/// Creates the EFI variable store from its template before the first start.
fn prepare_efi_vars(command: &QemuCommand) -> Result<()> {
    if let Some((template, store)) = &command.efi_vars {
        if !store.exists() {
            std::fs::copy(template, store)
                .map_err(|e| Error::io(store, "create from OVMF template", e))?;
        }
    }
    Ok(())
}
