//! The JSON documents of the agent's API (`docs/api.md` shows them on the wire).

use serde::{Deserialize, Serialize};

/// The API's path prefix.
pub const PREFIX: &str = "/api/v1";

/// `POST /api/v1/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

/// A session token and what it allows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginReply {
    /// Sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// Seconds until it expires.
    pub expires_in_secs: u64,
    /// The user's role.
    pub role: String,
}

/// `GET /api/v1/ping`: the host and who is asking.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PingReply {
    /// The host's name.
    pub host: String,
    /// Its root folder.
    pub root: String,
    /// How many VMs are registered.
    pub vms: usize,
    /// The user.
    pub user: String,
    /// The user's role.
    pub role: String,
    /// The agent's version.
    pub version: String,
}

/// A VM as lookups report it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmInfo {
    /// Managed object reference.
    pub moref: String,
    /// Display name.
    pub name: String,
    /// BIOS UUID (empty if none).
    pub uuid: String,
    /// First known guest address (empty if none).
    pub ipaddr: String,
    /// `poweredOn`, `poweredOff` or `suspended`.
    pub power_state: String,
    /// The .vmx as `[datastore] path`.
    pub vmx: String,
}

/// `GET /api/v1/vms?spec=...`: the VMs a specifier finds (all VMs without one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmList {
    /// The VMs.
    pub vms: Vec<VmInfo>,
    /// Whether the specifier names a group (finding nothing is then no error).
    pub group: bool,
}

/// `GET /api/v1/inventory`: folders, resource pools and datastores.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inventory {
    /// VM folders as displayed (`/vm/...`).
    pub folders: Vec<String>,
    /// Resource pools as displayed.
    pub pools: Vec<String>,
    /// Datastores: name and folder on the host.
    pub datastores: Vec<(String, String)>,
}

/// `GET /api/v1/vms/{moref}`: a VM in detail.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmDetails {
    /// What lookups say of it.
    pub info: VmInfo,
    /// Its disks: node and `[datastore] path` of the top link.
    pub disks: Vec<(String, String)>,
    /// Its snapshots: uid, name, description.
    pub snapshots: Vec<(u64, String, String)>,
}

/// `POST /api/v1/vms/{moref}/power`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerRequest {
    /// on, off, reset, suspend, resume or shutdown.
    pub op: String,
}

/// `POST /api/v1/vms/{moref}/snapshots`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The snapshot's name.
    pub name: String,
    /// Its description.
    #[serde(default)]
    pub description: String,
}

/// What a VM operation did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotTaken {
    /// The snapshot concerned, if any.
    pub uid: Option<u64>,
    /// One line.
    pub text: String,
}

/// `POST /api/v1/backups`: start a backup session.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// The VM (name or specifier).
    pub vm: String,
    /// Do not quiesce the guest.
    #[serde(default)]
    pub no_quiesce: bool,
    /// How long the guest may stay frozen.
    #[serde(default)]
    pub quiesce_timeout_secs: Option<u64>,
    /// Back up the other disks of a VM with a physical RDM.
    #[serde(default)]
    pub skip_physical_rdm: bool,
    /// Written into the catalog.
    #[serde(default)]
    pub tool_version: String,
}

/// A started backup session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupSession {
    /// Session id (in paths below `/api/v1/backups/`).
    pub id: String,
    /// Seconds the session lives without a keepalive; then the snapshot is removed.
    pub lease_secs: u64,
    /// The port of the agent's NBD server (TLS through STARTTLS).
    pub nbd_port: u16,
    /// What the backup holds.
    pub manifest: backup::ProxyManifest,
    /// The NBD export name of each disk node (valid while the session lives).
    pub exports: Vec<(String, String)>,
    /// What the host did (hooks, quiesce, snapshot), to show on the proxy.
    pub events: Vec<RemoteEvent>,
}

/// The end of a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Finished {
    /// What the host did (the snapshot removed).
    pub events: Vec<RemoteEvent>,
}

/// `POST /api/v1/restores`: start a restore session.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// The backup's catalog (text).
    pub catalog: String,
    /// An alternate catalog saying where to restore (`-a`), text.
    #[serde(default)]
    pub alternate_catalog: Option<String>,
    /// prompt, overwrite, keep or abort (prompt fails: nobody can answer on the host).
    pub policy: String,
    /// Provisioning of every restored disk instead of the catalog's.
    #[serde(default)]
    pub disk_format: Option<String>,
    /// Recreate raw device mappings.
    #[serde(default)]
    pub allow_rdm: bool,
    /// Power off a registered VM being replaced.
    #[serde(default)]
    pub power_off: bool,
    /// Wait for a VM lock instead of refusing.
    #[serde(default)]
    pub wait: bool,
    /// The configuration files the proxy sends: name and size.
    pub files: Vec<(String, u64)>,
    /// The disks the proxy writes.
    pub disks: Vec<RestoreDisk>,
}

/// A disk of a restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreDisk {
    /// The catalog's file name of the disk.
    pub name: String,
    /// Capacity in bytes.
    pub capacity: u64,
    /// `ddb.adapterType`.
    pub adapter: String,
}

/// A started restore session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreSession {
    /// Session id (in paths below `/api/v1/restores/`).
    pub id: String,
    /// Seconds the session lives without a call.
    pub lease_secs: u64,
    /// The agent's NBD port.
    pub nbd_port: u16,
    /// The writable NBD export of each disk (by the catalog's file name).
    pub exports: Vec<(String, String)>,
}

/// A finished restore.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreDone {
    /// The VM's display name.
    pub vm: String,
    /// Its .vmx, `[datastore] path`.
    pub vmx: String,
    /// Its moref (`None`: an existing registration was kept).
    pub moref: Option<String>,
    /// What was kept.
    pub kept: Vec<String>,
    /// What the host did.
    pub events: Vec<RemoteEvent>,
}

/// An error reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorReply {
    /// One line.
    pub error: String,
}

/// What the host's half of a backup did, as the proxy shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RemoteEvent {
    /// A hook ran.
    HookRan {
        /// Its path on the host.
        path: String,
        /// `pre-freeze` or `post-thaw`.
        stage: String,
    },
    /// Leftovers were committed.
    Consolidated {
        /// The VM.
        vm: String,
    },
    /// The guest was frozen.
    Quiesced {
        /// The VM.
        vm: String,
        /// File systems frozen.
        filesystems: u64,
        /// Time to freeze, ms.
        ms: u64,
    },
    /// The guest was not frozen.
    NotQuiesced {
        /// The VM.
        vm: String,
        /// Why.
        reason: String,
    },
    /// The guest was thawed.
    Thawed {
        /// The VM.
        vm: String,
        /// Frozen for, ms.
        ms: u64,
        /// Thawed by the watchdog.
        by_watchdog: bool,
    },
    /// A frozen guest a dead backup left was thawed.
    ThawedLeftover {
        /// The VM.
        vm: String,
    },
    /// The snapshot was taken.
    SnapshotTaken {
        /// The VM.
        vm: String,
        /// Live.
        live: bool,
        /// Took, ms.
        ms: u64,
    },
    /// The snapshot was removed.
    SnapshotRemoved {
        /// The VM.
        vm: String,
        /// Live.
        live: bool,
        /// Took, ms.
        ms: u64,
    },
    /// Change tracking said something.
    ChangeTracking {
        /// The text.
        text: String,
    },
    /// The backup's files were verified.
    Verified {
        /// How many.
        files: usize,
    },
    /// Something existing was kept.
    Kept {
        /// What.
        what: String,
    },
    /// Something existing was replaced.
    Replaced {
        /// What.
        what: String,
    },
    /// A warning.
    Warning {
        /// The text.
        text: String,
    },
}

impl RemoteEvent {
    /// The event to send over the wire (`None` for events a host's half never has).
    pub fn from_event(e: &backup::Event) -> Option<RemoteEvent> {
        use backup::Event as E;
        let ms = |d: &std::time::Duration| d.as_millis() as u64;
        Some(match e {
            E::HookRan { path, stage } => RemoteEvent::HookRan {
                path: path.display().to_string(),
                stage: (*stage).to_owned(),
            },
            E::Consolidated { vm } => RemoteEvent::Consolidated { vm: vm.clone() },
            E::Quiesced {
                vm,
                filesystems,
                elapsed,
            } => RemoteEvent::Quiesced {
                vm: vm.clone(),
                filesystems: *filesystems,
                ms: ms(elapsed),
            },
            E::NotQuiesced { vm, reason } => RemoteEvent::NotQuiesced {
                vm: vm.clone(),
                reason: reason.clone(),
            },
            E::Thawed {
                vm,
                frozen_for,
                by_watchdog,
            } => RemoteEvent::Thawed {
                vm: vm.clone(),
                ms: ms(frozen_for),
                by_watchdog: *by_watchdog,
            },
            E::ThawedLeftover { vm } => RemoteEvent::ThawedLeftover { vm: vm.clone() },
            E::SnapshotTaken { vm, live, elapsed } => RemoteEvent::SnapshotTaken {
                vm: vm.clone(),
                live: *live,
                ms: ms(elapsed),
            },
            E::SnapshotRemoved { vm, live, elapsed } => RemoteEvent::SnapshotRemoved {
                vm: vm.clone(),
                live: *live,
                ms: ms(elapsed),
            },
            E::ChangeTracking { text } => RemoteEvent::ChangeTracking { text: text.clone() },
            E::Warning(text) => RemoteEvent::Warning { text: text.clone() },
            E::Verified { files } => RemoteEvent::Verified { files: *files },
            E::Kept { what } => RemoteEvent::Kept { what: what.clone() },
            E::Replaced { what } => RemoteEvent::Replaced { what: what.clone() },
            _ => return None,
        })
    }

    /// The event as the local pipeline reports it.
    pub fn to_event(&self) -> backup::Event {
        use backup::Event as E;
        let d = |ms: &u64| std::time::Duration::from_millis(*ms);
        match self {
            RemoteEvent::HookRan { path, stage } => E::HookRan {
                path: path.into(),
                stage: if stage == "post-thaw" {
                    "post-thaw"
                } else {
                    "pre-freeze"
                },
            },
            RemoteEvent::Consolidated { vm } => E::Consolidated { vm: vm.clone() },
            RemoteEvent::Quiesced {
                vm,
                filesystems,
                ms,
            } => E::Quiesced {
                vm: vm.clone(),
                filesystems: *filesystems,
                elapsed: d(ms),
            },
            RemoteEvent::NotQuiesced { vm, reason } => E::NotQuiesced {
                vm: vm.clone(),
                reason: reason.clone(),
            },
            RemoteEvent::Thawed {
                vm,
                ms,
                by_watchdog,
            } => E::Thawed {
                vm: vm.clone(),
                frozen_for: d(ms),
                by_watchdog: *by_watchdog,
            },
            RemoteEvent::ThawedLeftover { vm } => E::ThawedLeftover { vm: vm.clone() },
            RemoteEvent::SnapshotTaken { vm, live, ms } => E::SnapshotTaken {
                vm: vm.clone(),
                live: *live,
                elapsed: d(ms),
            },
            RemoteEvent::SnapshotRemoved { vm, live, ms } => E::SnapshotRemoved {
                vm: vm.clone(),
                live: *live,
                elapsed: d(ms),
            },
            RemoteEvent::ChangeTracking { text } => E::ChangeTracking { text: text.clone() },
            RemoteEvent::Warning { text } => E::Warning(text.clone()),
            RemoteEvent::Verified { files } => E::Verified { files: *files },
            RemoteEvent::Kept { what } => E::Kept { what: what.clone() },
            RemoteEvent::Replaced { what } => E::Replaced { what: what.clone() },
        }
    }
}
