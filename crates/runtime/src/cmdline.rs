//! .vmx → QEMU command line.
//!
//! | .vmx                                   | QEMU                                             |
//! |----------------------------------------|--------------------------------------------------|
//! | `memsize`, `numvcpus`, `uuid.bios`     | `-m`, `-smp`, `-uuid`                            |
//! | `displayName`                          | `-name guest=`                                   |
//! | `scsiN.virtualDev = lsilogic/buslogic` | `lsi53c895a` (QEMU's closest parallel SCSI HBA)  |
//! | `scsiN.virtualDev = lsisas1068`        | `mptsas1068`                                     |
//! | `scsiN.virtualDev = pvscsi`            | `pvscsi`                                         |
//! | `scsiN.virtualDev = virtio-scsi`       | `virtio-scsi-pci` (vcb extension)                |
//! | `scsiN.virtualDev = virtio-blk`        | one `virtio-blk-pci` per disk (vcb extension)    |
//! | `scsiN:U` disk                         | `scsi-hd` at `scsi-id=U`                         |
//! | `ideC:U` disk                          | `ide-hd` on the built-in PIIX `ide.C`, unit U    |
//! | `sataN:U` disk                         | `ich9-ahci` + `ide-hd` on port U                 |
//! | `nvmeN:U` disk                         | `nvme` + `nvme-ns` with `nsid=U+1`               |
//! | each disk                              | `-blockdev file` (`<node>-file`) + `-blockdev vmdk` (`<node>`) |
//! | `serialN.fileType = "file"`            | `-chardev file,append=on` + `isa-serial`         |
//! | `ethernetN.present`                    | user-mode `-netdev` + `e1000`/`e1000e`/`vmxnet3`/`pcnet` |
//! | `firmware = "efi"`                     | OVMF from the `ovmf` package, vars in `<vm>.efivars.fd` |
//! | `vcb.kernel`/`vcb.initrd`/`vcb.append` | `-kernel`/`-initrd`/`-append`                    |
//! | (always)                               | `-sandbox on,...=deny` (see [`SANDBOX`])          |
//! | `vcb.guestAgent = "TRUE"`              | virtio-serial port `org.qemu.guest_agent.0` → [`AGENT_SOCKET`](crate::paths::AGENT_SOCKET) |
//!
//! The disk node name is the .vmx node with `-` for `:` (`scsi0:1` → `scsi0-1`); the
//! guest-visible device is `disk-scsi0-1`. A BIOS VM's `nvram` holds CMOS settings QEMU
//! has no use for and is ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::json;
use vmx::{Bus, DiskNode, VmConfig};

use crate::error::{Error, Result};
use crate::paths::{Resolver, VmFiles, AGENT_SOCKET, PID_FILE, QMP_SOCKET};

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's binary translator (slow, works everywhere).
    Tcg,
}

impl Accel {
    /// QEMU's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// A virtual disk of a running VM as QEMU knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningDisk {
    /// The .vmx node.
    pub node: DiskNode,
    /// The QEMU block node the disk was opened as (`scsi0-0`).
    pub node_name: String,
    /// The QEMU device id (`disk-scsi0-0`).
    pub device_id: String,
    /// The disk file the .vmx names (the top of its chain at power-on).
    pub path: PathBuf,
}

/// A QEMU command line for a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCommand {
    /// The program (`qemu-system-x86_64`).
    pub program: String,
    /// Its arguments. Relative paths in them are relative to the VM folder, QEMU's working
    /// directory.
    pub args: Vec<String>,
    /// The accelerator chosen.
    pub accel: Accel,
    /// The disks.
    pub disks: Vec<RunningDisk>,
    /// Whether the VM has a guest agent channel.
    pub guest_agent: bool,
    /// EFI variable store to create from a template before the first start.
    pub efi_vars: Option<(PathBuf, PathBuf)>,
    /// Settings that were ignored (unsupported serial port types and the like).
    pub warnings: Vec<String>,
}

impl QemuCommand {
    /// The command as one shell-quoted line, for logs and error messages.
    pub fn to_shell(&self) -> String {
        std::iter::once(&self.program)
            .chain(&self.args)
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// QEMU's seccomp filter: on, with the optional denials vcb never needs.
pub const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// The QEMU block node name of a disk node.
pub fn node_name(node: DiskNode) -> String {
    node.file_prefix()
}

/// The QEMU device id of a disk node.
pub fn device_id(node: DiskNode) -> String {
    format!("disk-{}", node.file_prefix())
}

/// Everything [`build`] needs besides the .vmx.
pub(crate) struct BuildInput<'a> {
    pub(crate) files: &'a VmFiles,
    pub(crate) datastores: &'a BTreeMap<String, PathBuf>,
    pub(crate) policy: Option<&'a dyn crate::paths::PathPolicy>,
    pub(crate) program: &'a str,
    pub(crate) accel: Accel,
    pub(crate) incoming: bool,
    pub(crate) extra_args: &'a [String],
}

/// Builds the command line for `cfg`.
pub(crate) fn build(cfg: &VmConfig, input: &BuildInput<'_>) -> Result<QemuCommand> {
    let vmx = &input.files.vmx;
    let resolver = Resolver::new(vmx, input.datastores, input.policy);
    let mut b = Builder {
        args: Vec::new(),
        warnings: Vec::new(),
    };
    b.push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    // A compromised QEMU (it parses guest-controlled data all day) may not gain
    // privileges, start programs or change scheduling and limits.
    b.push(&["-sandbox", SANDBOX]);
    b.push(&["-machine", "pc", "-accel", input.accel.as_str()]);
    let name = cfg.display_name().unwrap_or("vm");
    b.push(&["-name", &format!("guest={}", escape(name))]);
    b.push(&["-m", &format!("{}M", cfg.memsize_mb().unwrap_or(256))]);
    b.push(&["-smp", &cfg.num_vcpus().unwrap_or(1).max(1).to_string()]);
    if let Some(uuid) = cfg.uuid_bios() {
        b.push(&["-uuid", &uuid.to_string()]);
    }
    b.push(&["-pidfile", PID_FILE]);
    let qmp = format!("socket,id=vcb-qmp,path={QMP_SOCKET},server=on,wait=off");
    b.push(&["-chardev", &qmp, "-mon", "chardev=vcb-qmp,mode=control"]);
    let dict = cfg.dict();
    let mut efi_vars = None;
    if dict
        .get("firmware")
        .is_some_and(|f| f.eq_ignore_ascii_case("efi"))
    {
        efi_vars = Some(efi(&mut b, input.files, vmx)?);
    }
    for (key, flag) in [("vcb.kernel", "-kernel"), ("vcb.initrd", "-initrd")] {
        if let Some(v) = dict.get(key).filter(|v| !v.is_empty()) {
            b.push(&[flag, &resolver.resolve(key, v)?.to_string_lossy()]);
        }
    }
    if let Some(v) = dict.get("vcb.append") {
        b.push(&["-append", v]);
    }
    let disks = disks(&mut b, cfg, &resolver, vmx)?;
    serial_ports(&mut b, cfg, &resolver)?;
    nics(&mut b, cfg);
    let guest_agent = dict.get_bool("vcb.guestAgent").map_err(|e| Error::Vmx {
        path: vmx.clone(),
        source: e,
    })? == Some(true);
    if guest_agent {
        let chardev = format!("socket,id=vcb-qga,path={AGENT_SOCKET},server=on,wait=off");
        b.push(&["-chardev", &chardev]);
        b.push(&["-device", "virtio-serial-pci,id=vcb-vserial"]);
        b.push(&[
            "-device",
            "virtserialport,bus=vcb-vserial.0,chardev=vcb-qga,name=org.qemu.guest_agent.0",
        ]);
    }
    if input.incoming {
        b.push(&["-incoming", "defer"]);
    }
    b.args.extend(input.extra_args.iter().cloned());
    Ok(QemuCommand {
        program: input.program.to_owned(),
        args: b.args,
        accel: input.accel,
        disks,
        guest_agent,
        efi_vars,
        warnings: b.warnings,
    })
}

struct Builder {
    args: Vec<String>,
    warnings: Vec<String>,
}

impl Builder {
    fn push(&mut self, args: &[&str]) {
        self.args.extend(args.iter().map(|a| (*a).to_owned()));
    }
}

/// The QEMU device model for a SCSI controller's `virtualDev`; `None` for virtio-blk
/// (no controller: one PCI device per disk).
fn scsi_model(virtual_dev: Option<&str>) -> std::result::Result<Option<&'static str>, String> {
    let dev = virtual_dev.unwrap_or("lsilogic").to_ascii_lowercase();
    Ok(Some(match dev.as_str() {
        "lsilogic" | "buslogic" | "" => "lsi53c895a",
        "lsisas1068" => "mptsas1068",
        "pvscsi" => "pvscsi",
        "virtio-scsi" => "virtio-scsi-pci",
        "virtio-blk" => return Ok(None),
        other => return Err(format!("SCSI controller type {other:?} has no QEMU model")),
    }))
}

fn disks(
    b: &mut Builder,
    cfg: &VmConfig,
    r: &Resolver<'_>,
    vmx: &Path,
) -> Result<Vec<RunningDisk>> {
    let mut controllers: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (boot_index, disk) in cfg.disks().iter().enumerate() {
        let node = disk.node;
        let key = format!("{node}.fileName");
        let unsupported = |k: &str, reason: String| Error::Unsupported {
            vmx: vmx.to_path_buf(),
            key: k.to_owned(),
            reason,
        };
        let path = r.resolve(&key, &disk.file_name)?;
        let (name, dev) = (node_name(node), device_id(node));
        let file = json!({"driver": "file", "filename": path, "node-name": format!("{name}-file")});
        let fmt = json!({"driver": "vmdk", "file": format!("{name}-file"), "node-name": name});
        b.push(&[
            "-blockdev",
            &file.to_string(),
            "-blockdev",
            &fmt.to_string(),
        ]);
        let ctrl = node.controller_key();
        // The firmware's own boot entries (the -kernel option ROM) take index 0.
        let (unit, boot) = (node.unit, boot_index + 1);
        let device = match node.bus {
            Bus::Scsi => {
                let model = scsi_model(disk.virtual_dev.as_deref())
                    .map_err(|reason| unsupported(&format!("{ctrl}.virtualDev"), reason))?;
                match model {
                    None => format!("virtio-blk-pci,drive={name},id={dev},bootindex={boot}"),
                    Some(model) => {
                        if model == "lsi53c895a" && unit > 6 {
                            let reason = format!("unit {unit} is beyond {model}'s 7 targets");
                            return Err(unsupported(&key, reason));
                        }
                        add_controller(b, &mut controllers, &ctrl, &format!("{model},id={ctrl}"));
                        format!("scsi-hd,drive={name},bus={ctrl}.0,scsi-id={unit},lun=0,id={dev},bootindex={boot}")
                    }
                }
            }
            Bus::Ide => {
                if node.controller > 1 || unit > 1 {
                    return Err(unsupported(
                        &key,
                        "IDE has controllers 0-1, units 0-1".into(),
                    ));
                }
                format!(
                    "ide-hd,drive={name},bus=ide.{},unit={unit},id={dev},bootindex={boot}",
                    node.controller
                )
            }
            Bus::Sata => {
                if unit > 5 {
                    return Err(unsupported(&key, "AHCI has ports 0-5".into()));
                }
                add_controller(b, &mut controllers, &ctrl, &format!("ich9-ahci,id={ctrl}"));
                format!("ide-hd,drive={name},bus={ctrl}.{unit},id={dev},bootindex={boot}")
            }
            Bus::Nvme => {
                add_controller(
                    b,
                    &mut controllers,
                    &ctrl,
                    &format!("nvme,id={ctrl},serial=vcb-{ctrl}"),
                );
                format!(
                    "nvme-ns,drive={name},bus={ctrl},nsid={},id={dev},bootindex={boot}",
                    unit + 1
                )
            }
        };
        b.push(&["-device", &device]);
        out.push(RunningDisk {
            node,
            node_name: name,
            device_id: dev,
            path,
        });
    }
    Ok(out)
}

fn add_controller(b: &mut Builder, seen: &mut Vec<String>, key: &str, device: &str) {
    if !seen.iter().any(|k| k == key) {
        seen.push(key.to_owned());
        b.push(&["-device", device]);
    }
}

fn serial_ports(b: &mut Builder, cfg: &VmConfig, r: &Resolver<'_>) -> Result<()> {
    let dict = cfg.dict();
    for n in 0..4 {
        let key = |k: &str| format!("serial{n}.{k}");
        if dict.get_bool(&key("present")).ok().flatten() != Some(true) {
            continue;
        }
        let file_type = dict.get(&key("fileType")).unwrap_or("");
        let file_name = dict.get(&key("fileName")).unwrap_or("");
        if !file_type.eq_ignore_ascii_case("file") || file_name.is_empty() {
            b.warnings.push(format!(
                "serial{n}: fileType {file_type:?} is not supported; port left out"
            ));
            continue;
        }
        let path = r.resolve(&key("fileName"), file_name)?;
        let chardev = format!(
            "file,id=serial{n},path={},append=on",
            escape(&path.to_string_lossy())
        );
        b.push(&["-chardev", &chardev]);
        b.push(&[
            "-device",
            &format!("isa-serial,chardev=serial{n},index={n}"),
        ]);
    }
    Ok(())
}

fn nics(b: &mut Builder, cfg: &VmConfig) {
    let dict = cfg.dict();
    for n in 0..10 {
        let key = |k: &str| format!("ethernet{n}.{k}");
        if dict.get_bool(&key("present")).ok().flatten() != Some(true) {
            continue;
        }
        let model = match dict
            .get(&key("virtualDev"))
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("e1000e") => "e1000e",
            Some("vmxnet3") => "vmxnet3",
            Some("vlance") => "pcnet",
            _ => "e1000",
        };
        let mut device = format!("{model},netdev=net{n},id=ethernet{n}");
        let mac = dict
            .get(&key("address"))
            .or_else(|| dict.get(&key("generatedAddress")));
        if let Some(mac) = mac.filter(|m| is_mac(m)) {
            device.push_str(&format!(",mac={mac}"));
        }
        b.push(&["-netdev", &format!("user,id=net{n}"), "-device", &device]);
    }
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// OVMF firmware: read-only code plus a per-VM variable store (created from the template
/// on first start). Returns (template, store).
fn efi(b: &mut Builder, files: &VmFiles, vmx: &Path) -> Result<(PathBuf, PathBuf)> {
    const PAIRS: [(&str, &str); 2] = [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ];
    let Some((code, vars)) = PAIRS
        .iter()
        .find(|(c, v)| Path::new(c).exists() && Path::new(v).exists())
    else {
        return Err(Error::Unsupported {
            vmx: vmx.to_path_buf(),
            key: "firmware".into(),
            reason: "EFI firmware needs the ovmf package (no /usr/share/OVMF/OVMF_CODE*.fd)".into(),
        });
    };
    let stem = files.vmx.file_stem().unwrap_or_default().to_string_lossy();
    let store = files.folder.join(format!("{stem}.efivars.fd"));
    b.push(&[
        "-drive",
        &format!("if=pflash,format=raw,readonly=on,file={}", escape(code)),
    ]);
    b.push(&[
        "-drive",
        &format!(
            "if=pflash,format=raw,file={}",
            escape(&store.to_string_lossy())
        ),
    ]);
    Ok((PathBuf::from(vars), store))
}

/// Escapes a value for QEMU's `key=value,...` option syntax (a comma is doubled).
fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_=.,/:+@%".contains(&c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
#[path = "cmdline_tests.rs"]
mod tests;
