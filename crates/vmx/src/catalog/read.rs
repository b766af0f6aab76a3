//! Reading a catalog dictionary into a [`Catalog`].

use std::collections::BTreeMap;
use std::str::FromStr;

use super::{
    check_names, disk_key, file_key, parse_sha256, Catalog, CatalogDisk, CatalogFile, PowerState,
    CATALOG_VERSION,
};
use crate::node::parse_canonical_u32;
use crate::{validate_relative_name, Dict, DiskNode, Error};

/// One `disk.<node>.<field>` or `file.<N>.<field>` entry.
struct Field<'a> {
    line: usize,
    key: &'a str,
    value: &'a str,
}

impl Field<'_> {
    fn invalid(&self, reason: impl std::fmt::Display) -> Error {
        Error::invalid_value(self.line, self.key, self.value, reason)
    }

    fn parse<T: FromStr>(&self, expected: &str) -> Result<T, Error> {
        self.value
            .trim()
            .parse()
            .map_err(|_| self.invalid(expected))
    }

    fn relative_name(&self) -> Result<String, Error> {
        validate_relative_name(self.value).map_err(|e| self.invalid(e))?;
        Ok(self.value.to_owned())
    }
}

/// Fields of one disk or file, by lowercased field name.
type Fields<'a> = BTreeMap<String, Field<'a>>;

pub(super) fn from_dict(dict: &Dict) -> Result<Catalog, Error> {
    check_version(dict)?;
    let mut catalog = Catalog::new(required(dict, "display name")?, read_state(dict)?);
    catalog.uuid = parsed(dict, "uuid")?;
    catalog.host = text(dict, "host");
    catalog.ipaddr = text(dict, "ipaddr");
    catalog.folder_path = text(dict, "folder path");
    catalog.resource_pool = text(dict, "resourcepool");
    catalog.config_vmx = parsed(dict, "config.vmx")?;
    catalog.config_suspend_dir = parsed(dict, "config.suspenddir")?;
    catalog.config_log_dir = parsed(dict, "config.logdir")?;
    catalog.timestamp_unix_secs = dict.get_u64("timestamp")?;
    catalog.tool_version = text(dict, "tool version");
    catalog.quiesced = dict.get_bool("quiesced")?;

    let mut disks: BTreeMap<DiskNode, Fields<'_>> = BTreeMap::new();
    let mut files: BTreeMap<u32, Fields<'_>> = BTreeMap::new();
    for (line, key, value) in dict.iter_lines() {
        let field = Field { line, key, value };
        if let Some((node, name)) = disk_key(key) {
            let node = node.parse().map_err(|e| field.invalid(e))?;
            disks
                .entry(node)
                .or_default()
                .insert(name.to_ascii_lowercase(), field);
        } else if let Some(parsed) = file_key(key) {
            let (n, name) = parsed.map_err(|()| field.invalid("expected file.<N>.<field>"))?;
            files
                .entry(n)
                .or_default()
                .insert(name.to_ascii_lowercase(), field);
        }
    }
    catalog.disks = disks
        .into_iter()
        .map(|(node, fields)| read_disk(node, &fields))
        .collect::<Result<_, _>>()?;
    catalog.files = files
        .into_iter()
        .map(|(n, fields)| read_file(n, &fields))
        .collect::<Result<_, _>>()?;
    check_names(
        catalog.files.iter().map(|f| f.name.as_str()),
        std::iter::empty(),
    )?;
    catalog.dict = dict.clone();
    Ok(catalog)
}

fn check_version(dict: &Dict) -> Result<(), Error> {
    let found = dict
        .get("version")
        .ok_or_else(|| Error::missing("version"))?;
    let trimmed = found.trim();
    let (major, minor) = trimmed.split_once('.').unwrap_or((trimmed, "0"));
    let major = parse_canonical_u32(major)
        .filter(|_| parse_canonical_u32(minor).is_some())
        .ok_or_else(|| {
            let line = dict.line_of("version").unwrap_or(0);
            Error::invalid_value(line, "version", found, "expected <major>[.<minor>]")
        })?;
    if major != CATALOG_VERSION {
        return Err(Error::UnsupportedVersion {
            found: found.to_owned(),
            supported: CATALOG_VERSION,
        });
    }
    Ok(())
}

fn read_state(dict: &Dict) -> Result<PowerState, Error> {
    let value = required(dict, "state")?;
    value.parse().map_err(|_| {
        let line = dict.line_of("state").unwrap_or(0);
        Error::invalid_value(
            line,
            "state",
            value,
            "expected poweredOn, poweredOff or suspended",
        )
    })
}

fn required<'a>(dict: &'a Dict, key: &str) -> Result<&'a str, Error> {
    dict.get(key).ok_or_else(|| Error::missing(key))
}

fn text(dict: &Dict, key: &str) -> Option<String> {
    dict.get(key).map(str::to_owned)
}

fn parsed<T: FromStr<Err = Error>>(dict: &Dict, key: &str) -> Result<Option<T>, Error> {
    let Some(value) = dict.get(key) else {
        return Ok(None);
    };
    value
        .parse()
        .map(Some)
        .map_err(|e| Error::invalid_value(dict.line_of(key).unwrap_or(0), key, value, e))
}

fn read_disk(node: DiskNode, fields: &Fields<'_>) -> Result<CatalogDisk, Error> {
    let text = |name: &str| fields.get(name).map(|f| f.value.to_owned());
    let mut disk = CatalogDisk::new(node);
    disk.diskname = match fields.get("diskname") {
        Some(f) => Some(f.value.parse().map_err(|e| f.invalid(e))?),
        None => None,
    };
    disk.filename = fields
        .get("filename")
        .map(Field::relative_name)
        .transpose()?;
    disk.format = text("format");
    disk.capacity_bytes = match fields.get("capacity") {
        Some(f) => Some(f.parse("expected a size in bytes")?),
        None => None,
    };
    if let Some(f) = fields.get("backedup") {
        let v = f.value.trim();
        disk.backed_up = if v.eq_ignore_ascii_case("yes") || v.eq_ignore_ascii_case("true") {
            true
        } else if v.eq_ignore_ascii_case("no") || v.eq_ignore_ascii_case("false") {
            false
        } else {
            return Err(f.invalid("expected yes or no"));
        };
    }
    disk.reason = text("reason");
    disk.rdm_device = text("rdmdevice");
    disk.change_id = text("changeid");
    disk.parent_backup = match fields.get("parentbackup") {
        Some(f) => {
            let name = f.relative_name()?;
            if name.contains('/') {
                return Err(f.invalid("expected a folder name beside the backup"));
            }
            Some(name)
        }
        None => None,
    };
    if disk.backed_up && disk.filename.is_none() {
        return Err(Error::missing(format!("disk.{node}.filename")));
    }
    Ok(disk)
}

fn read_file(n: u32, fields: &Fields<'_>) -> Result<CatalogFile, Error> {
    let get = |name: &str| {
        fields
            .get(name)
            .ok_or_else(|| Error::missing(format!("file.{n}.{name}")))
    };
    let sha = get("sha256")?;
    Ok(CatalogFile {
        name: get("name")?.relative_name()?,
        size_bytes: get("size")?.parse("expected a size in bytes")?,
        sha256: parse_sha256(sha.value.trim())
            .ok_or_else(|| sha.invalid("expected 64 hex digits"))?,
    })
}
