//! [`Specifier`]: the VM search language of `vcbMounter -a`, `vcbVmName -s` and
//! `vcbSnapAll -a` (`../shared/specs/tools.md`).
//!
//! | specifier | finds |
//! |---|---|
//! | `ipaddr:<DNS name or IP>` | VMs whose `guestinfo.ip`, or whose name cache entry, has that address |
//! | `uuid:<BIOS UUID>` | the VM whose `uuid.bios` matches (spaces, dashes and case ignored) |
//! | `moref:<id>` | by moref number (`16`, `vm-16`), or by .vmx path (absolute, `/vmfs/volumes/DS/...` or `[DS] ...`) |
//! | `name:<display name>` | exact, case-sensitive display name |
//! | `powerstate:on\|off\|suspended` | every VM in that state |
//! | `any:` / `none:` | every VM / no VM |

use std::fmt;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;

use vmx::Uuid;

use crate::error::{Error, Result};
use crate::vm::{PowerState, Vm, VmRef};
use crate::Host;

/// A parsed VM specifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Specifier {
    /// `ipaddr:` a DNS name or IP address.
    IpAddr(String),
    /// `uuid:` a BIOS UUID.
    Uuid(Uuid),
    /// `moref:` a number.
    MoRef(u32),
    /// `moref:` a .vmx path.
    VmxPath(String),
    /// `name:` a display name.
    Name(String),
    /// `powerstate:`.
    PowerState(PowerState),
    /// `any:`.
    Any,
    /// `none:`.
    None,
}

/// A test of one VM against a specifier.
type Matcher<'a> = Box<dyn Fn(&Host, &Vm) -> bool + 'a>;

const KINDS: &str = "ipaddr:, uuid:, moref:, name:, powerstate:, any:, none:";

impl Specifier {
    /// Parses `kind:value`.
    ///
    /// # Errors
    /// [`Error::BadSpecifier`] for an unknown kind, a missing or malformed value.
    pub fn parse(text: &str) -> Result<Specifier> {
        let bad = |reason: String| Error::BadSpecifier {
            text: text.to_owned(),
            reason,
        };
        let Some((kind, value)) = text.split_once(':') else {
            return Err(bad(format!("expected KIND:VALUE with KIND one of {KINDS}")));
        };
        let need = |v: &str| {
            if v.is_empty() {
                Err(bad(format!("{kind}: needs a value")))
            } else {
                Ok(v.to_owned())
            }
        };
        Ok(match kind.to_ascii_lowercase().as_str() {
            "ipaddr" => Specifier::IpAddr(need(value.trim())?),
            "uuid" => Specifier::Uuid(
                value
                    .trim()
                    .parse()
                    .map_err(|e: vmx::Error| bad(e.to_string()))?,
            ),
            "moref" => {
                let v = need(value.trim())?;
                let digits = v.strip_prefix("vm-").unwrap_or(&v);
                match digits.parse::<u32>() {
                    Ok(n) => Specifier::MoRef(n),
                    Err(_) if v.starts_with('/') || v.starts_with('[') => Specifier::VmxPath(v),
                    Err(_) => return Err(bad("expected a moref number or a .vmx path".to_owned())),
                }
            }
            "name" => Specifier::Name(need(value)?),
            "powerstate" => Specifier::PowerState(
                PowerState::parse(value.trim())
                    .ok_or_else(|| bad("expected on, off or suspended".to_owned()))?,
            ),
            "any" if value.is_empty() => Specifier::Any,
            "none" if value.is_empty() => Specifier::None,
            "any" | "none" => return Err(bad(format!("{kind}: takes no value"))),
            _ => {
                return Err(bad(format!(
                    "unknown kind {kind:?}; expected one of {KINDS}"
                )))
            }
        })
    }

    /// Parses a `VM` argument: a specifier when it starts with a known kind, else a
    /// display name.
    ///
    /// # Errors
    /// [`Error::BadSpecifier`] for a known kind with a bad value.
    pub fn parse_vm_arg(text: &str) -> Result<Specifier> {
        let known = [
            "ipaddr",
            "uuid",
            "moref",
            "name",
            "powerstate",
            "any",
            "none",
        ];
        match text.split_once(':') {
            Some((kind, _)) if known.iter().any(|k| k.eq_ignore_ascii_case(kind)) => {
                Specifier::parse(text)
            }
            _ => Ok(Specifier::Name(text.to_owned())),
        }
    }

    /// True for specifiers meant to find groups (`powerstate:`, `any:`, `none:`), for
    /// which finding nothing is not an error.
    pub fn is_group(&self) -> bool {
        matches!(
            self,
            Specifier::PowerState(_) | Specifier::Any | Specifier::None
        )
    }

    /// The registered VMs this specifier finds, in inventory order. VMs whose .vmx cannot
    /// be read are skipped.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::BadFile`] reading the name cache (for `ipaddr:`).
    pub fn find(&self, host: &Host) -> Result<Vec<VmRef>> {
        if *self == Specifier::None {
            return Ok(Vec::new());
        }
        let (vms, _) = host.vms();
        let matcher = self.matcher(host)?;
        Ok(vms
            .iter()
            .filter(|vm| matcher(host, vm))
            .map(|vm| vm.moref)
            .collect())
    }

    fn matcher(&self, host: &Host) -> Result<Matcher<'_>> {
        Ok(match self {
            Specifier::Any => Box::new(|_, _| true),
            Specifier::None => Box::new(|_, _| false),
            Specifier::Name(n) => {
                Box::new(move |_, vm| vm.config.display_name() == Some(n.as_str()))
            }
            Specifier::Uuid(u) => Box::new(move |_, vm| vm.uuid() == Some(*u)),
            Specifier::MoRef(n) => Box::new(move |_, vm| vm.moref.0 == *n),
            Specifier::PowerState(s) => Box::new(move |h, vm| vm.power_state(h) == *s),
            Specifier::VmxPath(p) => {
                let target = vmx_path_target(host, p);
                Box::new(move |_, vm| target.as_ref() == Some(&vm.vmx_path))
            }
            Specifier::IpAddr(text) => {
                let addrs = resolve_addresses(text);
                let cache = crate::namecache::load(host.name_cache_path())?;
                let uuids: Vec<String> = cache
                    .by_address(text, &addrs)
                    .map(|e| e.uuid.clone())
                    .collect();
                let names: Vec<String> = cache
                    .by_address(text, &addrs)
                    .filter(|e| e.uuid.is_empty())
                    .map(|e| e.name.clone())
                    .collect();
                Box::new(move |h, vm| {
                    let guest = vm.guest_ips(h).iter().any(|ip| {
                        ip.eq_ignore_ascii_case(text)
                            || ip.parse::<IpAddr>().is_ok_and(|a| addrs.contains(&a))
                    });
                    let cached = vm.uuid().is_some_and(|u| uuids.contains(&u.to_string()))
                        || names.iter().any(|n| *n == vm.name());
                    guest || cached
                })
            }
        })
    }
}

/// The addresses of `text`: itself when it is an IP address, else what DNS (or
/// `/etc/hosts`) resolves it to; nothing when it does not resolve.
fn resolve_addresses(text: &str) -> Vec<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return vec![ip];
    }
    let mut out: Vec<IpAddr> = (text, 0)
        .to_socket_addrs()
        .map(|it| it.map(|sa| sa.ip()).collect())
        .unwrap_or_default();
    out.dedup();
    out
}

/// The canonical .vmx file a `moref:` path names, if it exists.
fn vmx_path_target(host: &Host, text: &str) -> Option<PathBuf> {
    let path = if text.starts_with('[') {
        host.resolve(&text.parse().ok()?).ok()?
    } else if let Some(rest) = text.strip_prefix("/vmfs/volumes/") {
        let (ds, rel) = rest.split_once('/')?;
        host.resolve(&vmx::DatastorePath::new(ds, rel).ok()?).ok()?
    } else {
        PathBuf::from(text)
    };
    std::fs::canonicalize(path).ok()
}

impl fmt::Display for Specifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Specifier::IpAddr(a) => write!(f, "ipaddr:{a}"),
            Specifier::Uuid(u) => write!(f, "uuid:{u}"),
            Specifier::MoRef(n) => write!(f, "moref:{n}"),
            Specifier::VmxPath(p) => write!(f, "moref:{p}"),
            Specifier::Name(n) => write!(f, "name:{n}"),
            Specifier::PowerState(s) => write!(f, "powerstate:{}", s.short_name()),
            Specifier::Any => f.write_str("any:"),
            Specifier::None => f.write_str("none:"),
        }
    }
}

impl Host {
    /// The one VM `arg` (a display name or a specifier) names.
    ///
    /// # Errors
    /// [`Error::BadSpecifier`], [`Error::VmNotFound`], [`Error::AmbiguousVm`], and the
    /// error loading the VM.
    pub fn find_vm(&self, arg: &str) -> Result<Vm> {
        let spec = Specifier::parse_vm_arg(arg)?;
        // A moref names a VM even when its .vmx is broken: report that error.
        if let Specifier::MoRef(n) = spec {
            return self.vm(VmRef(n)).map_err(|e| match e {
                Error::NotRegistered { .. } => Error::VmNotFound {
                    spec: arg.to_owned(),
                },
                other => other,
            });
        }
        let found = spec.find(self)?;
        match found.as_slice() {
            [] => Err(Error::VmNotFound {
                spec: arg.to_owned(),
            }),
            [one] => self.vm(*one),
            many => Err(Error::AmbiguousVm {
                spec: arg.to_owned(),
                count: many.len(),
                morefs: many
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        assert_eq!(
            Specifier::parse("ipaddr:10.0.0.1").unwrap(),
            Specifier::IpAddr("10.0.0.1".into())
        );
        let u = Specifier::parse("uuid:56 4d 78 a1 8c 1c 59 b4-fa 02 be 14 13 87 97 be").unwrap();
        assert_eq!(u.to_string(), "uuid:564d78a1-8c1c-59b4-fa02-be14138797be");
        assert_eq!(
            Specifier::parse("moref:192").unwrap(),
            Specifier::MoRef(192)
        );
        assert_eq!(
            Specifier::parse("moref:vm-16").unwrap(),
            Specifier::MoRef(16)
        );
        assert_eq!(
            Specifier::parse("moref:/vmfs/volumes/vol0/vm37/vm37.vmx").unwrap(),
            Specifier::VmxPath("/vmfs/volumes/vol0/vm37/vm37.vmx".into())
        );
        assert_eq!(
            Specifier::parse("name:Virtual Machine 37").unwrap(),
            Specifier::Name("Virtual Machine 37".into())
        );
        assert_eq!(
            Specifier::parse("powerstate:suspended").unwrap(),
            Specifier::PowerState(PowerState::Suspended)
        );
        assert_eq!(Specifier::parse("any:").unwrap(), Specifier::Any);
        assert_eq!(Specifier::parse("NONE:").unwrap(), Specifier::None);
        assert!(Specifier::parse("any:").unwrap().is_group());
    }

    #[test]
    fn vm_args_fall_back_to_names() {
        assert_eq!(
            Specifier::parse_vm_arg("web:1").unwrap(),
            Specifier::Name("web:1".into())
        );
        assert_eq!(
            Specifier::parse_vm_arg("vm37").unwrap(),
            Specifier::Name("vm37".into())
        );
        assert_eq!(
            Specifier::parse_vm_arg("moref:17").unwrap(),
            Specifier::MoRef(17)
        );
    }

    #[test]
    fn error_bad_specifier() {
        for s in [
            "vm37",
            "color:blue",
            "uuid:12",
            "moref:abc",
            "powerstate:sleeping",
            "name:",
            "any:x",
        ] {
            let e = Specifier::parse(s).unwrap_err();
            assert!(matches!(e, Error::BadSpecifier { .. }), "{s}: {e}");
        }
        let e = Specifier::parse("color:blue").unwrap_err().to_string();
        assert!(e.contains("unknown kind \"color\""), "{e}");
    }

    #[test]
    fn resolves_literal_and_local_names() {
        assert_eq!(
            resolve_addresses("10.1.2.3"),
            ["10.1.2.3".parse::<IpAddr>().unwrap()]
        );
        assert!(resolve_addresses("localhost")
            .iter()
            .any(|a| a.is_loopback()));
        assert!(resolve_addresses("no-such-host.invalid").is_empty());
    }
}
