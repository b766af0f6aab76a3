//! The operations swept: extend, punch-zero, rename, commit, restore with overwrite.

use crate::harness::{qemu_check_clean, sweep, Cmd};
use crate::util::{content, fill, Env};
use std::path::{Path, PathBuf};
use vmdk::{CreateSpec, DiskFormat};

const MB: u64 = 1 << 20;

fn bin(name: &str) -> String {
    match name {
        "vmkfstools" => env!("CARGO_BIN_EXE_vmkfstools"),
        "vcb" => env!("CARGO_BIN_EXE_vcb"),
        "vcbMounter" => env!("CARGO_BIN_EXE_vcbMounter"),
        _ => env!("CARGO_BIN_EXE_vcbRestore"),
    }
    .to_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A folder with `d.vmdk` of `format` holding the test pattern.
fn disk_template(format: DiskFormat) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("tpl");
    std::fs::create_dir(&dir).unwrap();
    let d = dir.join("d.vmdk");
    vmdk::create(&d, &CreateSpec::new(4 * MB, format)).unwrap();
    fill(&d, 9, 4 * MB);
    (t, dir)
}

/// The disk's content after opening it (the open finishes or undoes a half-done swap).
fn opened(disk: &Path, what: &str) -> Vec<u8> {
    match vmdk::Disk::open(disk, &vmdk::OpenOptions::read_only()) {
        Ok(_) => content(disk),
        Err(e) => panic!("{what}: {} does not open: {e}", disk.display()),
    }
}

/// Every file of the folder is a file of the disk (no leftover of the operation).
fn no_leftovers(dir: &Path, disk: &Path, what: &str) {
    let files = vmdk::link_files(disk).unwrap();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        assert!(files.contains(&p), "{what}: leftover {}", p.display());
    }
}

#[test]
fn issue_10_extend_of_a_sparse_disk_survives_kill_9() {
    let (_t, tpl) = disk_template(DiskFormat::MonoSparse);
    let old = content(&tpl.join("d.vmdk"));
    sweep(
        &tpl,
        |root| {
            Cmd::new(&bin("vmkfstools"), &["-X", "8M", s(&root.join("d.vmdk"))])
                .env("VCB_ROOT", "/nonexistent")
        },
        |root, what| {
            let d = root.join("d.vmdk");
            let got = opened(&d, what);
            qemu_check_clean(&d);
            no_leftovers(root, &d, what);
            assert_eq!(&got[..old.len()], &old[..], "{what}: data changed");
            match got.len() as u64 {
                n if n == 4 * MB => false,
                n if n == 8 * MB => got[old.len()..].iter().all(|&b| b == 0),
                n => panic!("{what}: capacity {n}"),
            }
        },
    );
}

#[test]
fn issue_10_punch_zero_of_a_sparse_disk_survives_kill_9() {
    let (_t, tpl) = disk_template(DiskFormat::MonoSparse);
    let d = tpl.join("d.vmdk");
    crate::util::write(&d, 2 * MB, &vec![0u8; MB as usize]);
    let old = content(&d);
    sweep(
        &tpl,
        |root| {
            Cmd::new(&bin("vmkfstools"), &["-K", s(&root.join("d.vmdk"))])
                .env("VCB_ROOT", "/nonexistent")
        },
        |root, what| {
            let d = root.join("d.vmdk");
            assert!(opened(&d, what) == old, "{what}: content changed");
            qemu_check_clean(&d);
            no_leftovers(root, &d, what);
            false
        },
    );
}

#[test]
fn issue_10_rename_survives_kill_9() {
    let (_t, tpl) = disk_template(DiskFormat::Thin);
    let old = content(&tpl.join("d.vmdk"));
    sweep(
        &tpl,
        |root| {
            Cmd::new(
                &bin("vmkfstools"),
                &["-E", s(&root.join("d.vmdk")), s(&root.join("e.vmdk"))],
            )
            .env("VCB_ROOT", "/nonexistent")
        },
        |root, what| {
            // An open of either name first finishes or undoes the swap in the folder.
            vmdk::replace::recover_folder(root).unwrap();
            let (d, e) = (root.join("d.vmdk"), root.join("e.vmdk"));
            let (has_d, has_e) = (d.exists(), e.exists());
            assert!(has_d != has_e, "{what}: d {has_d}, e {has_e}");
            let disk = if has_e { e } else { d };
            assert!(opened(&disk, what) == old, "{what}");
            qemu_check_clean(&disk);
            no_leftovers(root, &disk, what);
            has_e
        },
    );
}

#[test]
fn issue_10_commit_survives_kill_9() {
    let (_t, tpl) = disk_template(DiskFormat::Thin);
    let (base, child) = (tpl.join("d.vmdk"), tpl.join("d-000001.vmdk"));
    vmdk::create_child(&base, &child, vmdk::ChildFormat::VmfsSparse).unwrap();
    // Scattered runs: the commit writes each one, so there are many kill points.
    for i in 0..64u64 {
        crate::util::write(&child, i * 61_440 + 512 * (i % 7), &[i as u8 | 1; 4096]);
    }
    let want = content(&child);
    sweep(
        &tpl,
        |root| {
            Cmd::new(
                &bin("vcb"),
                &["disk", "commit", s(&root.join("d-000001.vmdk"))],
            )
            .env("VCB_ROOT", "/nonexistent")
        },
        |root, what| {
            // The chain from its top reads the child's view at every instant.
            let child = root.join("d-000001.vmdk");
            let top = if child.exists() {
                child.clone()
            } else {
                root.join("d.vmdk")
            };
            assert!(opened(&top, what) == want, "{what}");
            qemu_check_clean(&top);
            !child.exists()
        },
    );
}

#[test]
fn issue_10_restore_with_overwrite_survives_kill_9() {
    let env = Env::new();
    env.vm(
        "vm1",
        &[(2 * MB, DiskFormat::Thin), (MB, DiskFormat::ZeroedThick)],
        3,
    );
    let backup = env.path("b");
    env.ok("vcbMounter", &["-a", "name:vm1", "-r", s(&backup)]);
    let disks: Vec<PathBuf> = crate::util::disk_paths(&env, "vm1");
    let new: Vec<Vec<u8>> = disks.iter().map(|d| content(d)).collect();
    for d in &disks {
        crate::util::write(d, 0, b"changed after the backup");
    }
    let old: Vec<Vec<u8>> = disks.iter().map(|d| content(d)).collect();
    let rel: Vec<PathBuf> = disks
        .iter()
        .map(|d| d.strip_prefix(env.dir.path()).unwrap().to_path_buf())
        .collect();
    sweep(
        env.dir.path(),
        |root| {
            Cmd::new(
                &bin("vcbRestore"),
                &[
                    "-s",
                    s(&root.join("b")),
                    "-l",
                    "overwrite",
                    "--root",
                    s(&root.join("host")),
                ],
            )
            .env("VCB_ROOT", s(&root.join("host")))
        },
        |root, what| {
            // The next process to open the host finishes or undoes the swap.
            let h = host::Host::open(&root.join("host")).unwrap();
            let vm = h.find_vm("vm1").unwrap_or_else(|e| panic!("{what}: {e}"));
            let got: Vec<Vec<u8>> = rel.iter().map(|r| opened(&root.join(r), what)).collect();
            for r in &rel {
                qemu_check_clean(&root.join(r));
            }
            let names: Vec<PathBuf> = vm.disks(&h).unwrap().into_iter().map(|d| d.path).collect();
            assert_eq!(names.len(), 2, "{what}");
            let hidden: Vec<PathBuf> = crate::util::walk(&vm.dir)
                .into_iter()
                .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".vm1"))
                .collect();
            assert!(
                hidden.is_empty(),
                "{what}: staged or aside files left: {hidden:?}"
            );
            if got == new {
                true
            } else {
                assert!(got == old, "{what}: neither the old nor the new VM");
                false
            }
        },
    );
}
