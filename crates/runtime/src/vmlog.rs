//! `vmware.log`: QEMU's own output plus one line per runtime action and QMP event, in
//! VMware's `2025-01-31T12:00:00.000Z| source| text` layout.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Appends one timestamped line. The log is diagnostic only, so a failure to write it is
/// ignored rather than failing the operation it describes.
pub(crate) fn append(log: &Path, source: &str, text: &str) {
    let line = format!(
        "{}| {source}| {}\n",
        timestamp(SystemTime::now()),
        text.trim_end()
    );
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(log) {
        let _ = f.write_all(line.as_bytes());
    }
}

/// The text QEMU (or the runtime) appended to `log` after byte `offset`, at most the
/// last 4 KiB, for error messages.
pub(crate) fn tail_since(log: &Path, offset: u64) -> String {
    const MAX: usize = 4096;
    let Ok(bytes) = std::fs::read(log) else {
        return String::new();
    };
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(bytes.len());
    let new = &bytes[start..];
    let new = &new[new.len().saturating_sub(MAX)..];
    String::from_utf8_lossy(new).trim().to_owned()
}

/// `2025-01-31T12:00:00.000Z` (UTC).
fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Year, month, day of the day `z` days after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        u32::try_from(m).unwrap_or(1),
        u32::try_from(d).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_iso8601() {
        let t = UNIX_EPOCH + Duration::from_millis(1_738_324_800_123);
        assert_eq!(timestamp(t), "2025-01-31T12:00:00.123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn appends_and_tails() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("vmware.log");
        append(&log, "vcb", "first");
        let len = std::fs::metadata(&log).unwrap().len();
        append(&log, "qmp", "event STOP null\n");
        let tail = tail_since(&log, len);
        assert!(tail.ends_with("| qmp| event STOP null"), "{tail}");
        assert!(!tail.contains("first"));
    }
}
