//! Writing a [`Catalog`] back into its dictionary.

use std::collections::HashSet;

use super::{check_names, disk_key, file_key, Catalog, CATALOG_VERSION};
use crate::{Dict, DiskNode, Error};

/// Sets `key` to `value`, or removes it for `None`.
fn put(dict: &mut Dict, key: &str, value: Option<&str>) -> Result<(), Error> {
    match value {
        Some(v) => dict.set(key, v),
        None => {
            dict.remove(key);
            Ok(())
        }
    }
}

/// Sets `key` to the number `value`, or removes it for `None`.
fn put_number(dict: &mut Dict, key: &str, value: Option<u64>) -> Result<(), Error> {
    match value {
        Some(v) => dict.set_number(key, v),
        None => {
            dict.remove(key);
            Ok(())
        }
    }
}

pub(super) fn to_dict(catalog: &Catalog) -> Result<Dict, Error> {
    check_names(
        catalog.files.iter().map(|f| f.name.as_str()),
        catalog.disks.iter().filter_map(|d| d.filename.as_deref()),
    )?;
    let mut dict = catalog.dict.clone();
    if !dict.contains_key("version") {
        dict.set_number("version", CATALOG_VERSION)?;
    }
    dict.set_bare("state", catalog.state.as_str())?;
    dict.set("display name", &catalog.display_name)?;
    let uuid = catalog.uuid.map(|u| u.to_string());
    put(&mut dict, "uuid", uuid.as_deref())?;
    put(&mut dict, "host", catalog.host.as_deref())?;
    put(&mut dict, "ipaddr", catalog.ipaddr.as_deref())?;
    put(&mut dict, "folder path", catalog.folder_path.as_deref())?;
    put(&mut dict, "resourcepool", catalog.resource_pool.as_deref())?;
    for (key, path) in [
        ("config.vmx", &catalog.config_vmx),
        ("config.suspenddir", &catalog.config_suspend_dir),
        ("config.logdir", &catalog.config_log_dir),
    ] {
        put(
            &mut dict,
            key,
            path.as_ref().map(ToString::to_string).as_deref(),
        )?;
    }
    put_number(&mut dict, "timestamp", catalog.timestamp_unix_secs)?;
    put(&mut dict, "tool version", catalog.tool_version.as_deref())?;
    let quiesced = catalog.quiesced.map(|q| if q { "yes" } else { "no" });
    put(&mut dict, "quiesced", quiesced)?;
    write_disks(&mut dict, catalog)?;
    write_files(&mut dict, catalog)?;
    Ok(dict)
}

fn write_disks(dict: &mut Dict, catalog: &Catalog) -> Result<(), Error> {
    let nodes: HashSet<DiskNode> = catalog.disks.iter().map(|d| d.node).collect();
    dict.remove_where(|key| {
        disk_key(key).is_some_and(|(node, _)| {
            node.parse::<DiskNode>()
                .map_or(true, |n| !nodes.contains(&n))
        })
    });
    for disk in &catalog.disks {
        let key = |field: &str| format!("disk.{}.{field}", disk.node);
        let diskname = disk.diskname.as_ref().map(ToString::to_string);
        put(dict, &key("diskname"), diskname.as_deref())?;
        put(dict, &key("filename"), disk.filename.as_deref())?;
        put(dict, &key("format"), disk.format.as_deref())?;
        put_number(dict, &key("capacity"), disk.capacity_bytes)?;
        put(dict, &key("backedup"), (!disk.backed_up).then_some("no"))?;
        put(dict, &key("reason"), disk.reason.as_deref())?;
        put(dict, &key("rdmdevice"), disk.rdm_device.as_deref())?;
        put(dict, &key("changeid"), disk.change_id.as_deref())?;
        put(dict, &key("parentbackup"), disk.parent_backup.as_deref())?;
    }
    Ok(())
}

fn write_files(dict: &mut Dict, catalog: &Catalog) -> Result<(), Error> {
    let count = catalog.files.len();
    dict.remove_where(|key| {
        file_key(key).is_some_and(|parsed| {
            parsed.map_or(true, |(n, _)| {
                usize::try_from(n).map_or(true, |n| n >= count)
            })
        })
    });
    for (n, file) in catalog.files.iter().enumerate() {
        dict.set(&format!("file.{n}.name"), &file.name)?;
        dict.set_number(&format!("file.{n}.size"), file.size_bytes)?;
        dict.set(&format!("file.{n}.sha256"), &file.sha256_hex())?;
    }
    Ok(())
}
