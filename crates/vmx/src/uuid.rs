//! [`Uuid`]: a VM's 128-bit identity (`uuid.bios`, a catalog's `uuid`).

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A 16-byte UUID as VMware uses it: no version or variant bits are assumed.
///
/// The .vmx writes it as 16 spaced hex bytes with a dash in the middle
/// (`56 4d 78 a1 8c 1c 59 b4-fa 02 be 14 13 87 97 be`, see [`Uuid::to_vmx_string`]);
/// [`Display`](fmt::Display) gives the canonical form
/// (`564d78a1-8c1c-59b4-fa02-be14138797be`). Parsing accepts both, and any spacing or
/// dashes, as long as exactly 32 hex digits remain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Uuid([u8; 16]);

impl Uuid {
    /// A UUID from its 16 bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Uuid {
        Uuid(bytes)
    }

    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// A fresh random UUID. The first two bytes are `56 4d`, as in the `uuid.bios` that
    /// VMware's hosted products generate; the other 14 are random.
    pub fn random() -> Uuid {
        let mut bytes: [u8; 16] = rand::random();
        bytes[0] = 0x56;
        bytes[1] = 0x4d;
        Uuid(bytes)
    }

    /// The .vmx form: `56 4d 78 a1 8c 1c 59 b4-fa 02 be 14 13 87 97 be`.
    pub fn to_vmx_string(&self) -> String {
        let hex = |bytes: &[u8]| {
            bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!("{}-{}", hex(&self.0[..8]), hex(&self.0[8..]))
    }
}

impl fmt::Display for Uuid {
    /// The canonical form: `564d78a1-8c1c-59b4-fa02-be14138797be`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl FromStr for Uuid {
    type Err = Error;

    fn from_str(s: &str) -> Result<Uuid, Error> {
        let bad = || Error::BadUuid { text: s.to_owned() };
        let mut bytes = [0u8; 16];
        let mut n = 0usize;
        for c in s.chars() {
            if c == ' ' || c == '-' {
                continue;
            }
            let digit = c.to_digit(16).ok_or_else(bad)?;
            let slot = bytes.get_mut(n / 2).ok_or_else(bad)?;
            // `digit` < 16, so the conversion cannot fail.
            let digit = u8::try_from(digit).map_err(|_| bad())?;
            *slot = *slot << 4 | digit;
            n += 1;
        }
        if n != 32 {
            return Err(bad());
        }
        Ok(Uuid(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMX_FORM: &str = "56 4d 78 a1 8c 1c 59 b4-fa 02 be 14 13 87 97 be";
    const CANONICAL: &str = "564d78a1-8c1c-59b4-fa02-be14138797be";

    #[test]
    fn both_forms_parse_to_the_same_uuid() {
        let a: Uuid = VMX_FORM.parse().unwrap();
        let b: Uuid = CANONICAL.parse().unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), CANONICAL);
        assert_eq!(a.to_vmx_string(), VMX_FORM);
        assert_eq!(a.as_bytes()[..2], [0x56, 0x4d]);
        let upper: Uuid = "50 11 5E 16 9B DC 49 D7-F1 71 53 C4 D7 F9 17 10"
            .parse()
            .unwrap();
        assert_eq!(upper.to_string(), "50115e16-9bdc-49d7-f171-53c4d7f91710");
    }

    #[test]
    fn random_uuids_differ_and_round_trip() {
        let a = Uuid::random();
        let b = Uuid::random();
        assert_ne!(a, b);
        assert_eq!(a.to_vmx_string().parse::<Uuid>().unwrap(), a);
        assert_eq!(Uuid::from_bytes(*a.as_bytes()), a);
    }

    #[test]
    fn error_bad_uuid() {
        for s in [
            "",
            "56 4d",
            "g64d78a1-8c1c-59b4-fa02-be14138797be",
            &format!("{CANONICAL}0"),
        ] {
            assert!(
                matches!(s.parse::<Uuid>(), Err(Error::BadUuid { .. })),
                "{s:?}"
            );
        }
    }
}
