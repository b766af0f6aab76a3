//! Issue 10: descriptors written by an attacker or by other tools.

use crate::util::*;
use std::path::Path;
use vmdk::{Confinement, CreateSpec, Disk, DiskFormat, Error, OpenOptions};

fn flat_descriptor(dir: &Path, name: &str, extent: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!("# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 16 FLAT \"{extent}\" 0\n"),
    )
    .unwrap();
    p
}

fn refusal(path: &Path, opts: &OpenOptions) -> String {
    match Disk::open(path, opts) {
        Ok(_) => panic!("{} opened", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn issue_10_symlinked_fifo_and_device_extents_are_refused() {
    let dir = tempdir();
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, vec![b's'; 8192]).unwrap();
    let vm = dir.path().join("vm");
    std::fs::create_dir(&vm).unwrap();
    // A symbolic link out of the folder is resolved before the check.
    std::os::unix::fs::symlink(&secret, vm.join("link-flat.vmdk")).unwrap();
    let p = flat_descriptor(&vm, "link.vmdk", "link-flat.vmdk");
    let e = refusal(&p, &OpenOptions::read_only());
    assert!(e.contains("outside the disk's folder"), "{e}");
    // The line from the report: an absolute name of a host file.
    let p = flat_descriptor(&vm, "evil.vmdk", secret.to_str().unwrap());
    assert!(refusal(&p, &OpenOptions::read_only()).contains("outside"));
    // A FIFO in the folder is refused, not opened (which would block).
    let fifo = vm.join("fifo-flat.vmdk");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let p = flat_descriptor(&vm, "fifo.vmdk", "fifo-flat.vmdk");
    let e = refusal(&p, &OpenOptions::read_only());
    assert!(e.contains("FIFO"), "{e}");
    // A device is no data extent, even when the user allows any path.
    let p = flat_descriptor(&vm, "dev.vmdk", "/dev/zero");
    let anywhere = OpenOptions::read_only().confined(Confinement::Anywhere);
    let e = refusal(&p, &anywhere);
    assert!(e.contains("not a regular file"), "{e}");
    // A link inside the folder to a file inside the folder is fine.
    std::fs::write(vm.join("real-flat.vmdk"), vec![7u8; 8192]).unwrap();
    std::os::unix::fs::symlink("real-flat.vmdk", vm.join("alias-flat.vmdk")).unwrap();
    let p = flat_descriptor(&vm, "alias.vmdk", "alias-flat.vmdk");
    let mut d = Disk::open(&p, &OpenOptions::read_only()).unwrap();
    let mut buf = [0u8; 16];
    d.read_at(0, &mut buf).unwrap();
    assert_eq!(buf, [7u8; 16]);
}

#[test]
fn issue_10_linked_clone_bases_open_only_inside_the_roots() {
    let dir = tempdir();
    let ds = std::fs::canonicalize(dir.path()).unwrap().join("ds");
    let (base_dir, clone_dir) = (ds.join("base"), ds.join("clone"));
    std::fs::create_dir_all(&base_dir).unwrap();
    std::fs::create_dir_all(&clone_dir).unwrap();
    let base = base_dir.join("base.vmdk");
    vmdk::create(&base, &CreateSpec::new(1 << 20, DiskFormat::Thin)).unwrap();
    let clone = clone_dir.join("clone-000001.vmdk");
    vmdk::create_child(&base, &clone, vmdk::ChildFormat::VmfsSparse).unwrap();
    let e = refusal(&clone, &OpenOptions::read_only());
    assert!(e.contains("parent"), "{e}");
    let roots = OpenOptions::read_only().confined(Confinement::Roots(vec![ds.clone()].into()));
    assert_eq!(Disk::open(&clone, &roots).unwrap().links().len(), 2);
    // A root that does not hold the descriptor gives it no more than its folder.
    let other = OpenOptions::read_only().confined(Confinement::Roots(vec![base_dir].into()));
    assert!(Disk::open(&clone, &other).is_err());
}

#[test]
fn issue_10_embedded_descriptors_name_the_file_itself() {
    require_tool("qemu-img");
    let dir = tempdir();
    let raw = dir.path().join("src.raw");
    std::fs::write(&raw, scattered_content(1 << 20, 10)).unwrap();
    for (sub, name) in [
        ("monolithicSparse", "disk"),
        ("streamOptimized", "generated-stream.vmdk"),
    ] {
        let p = dir.path().join(format!("{sub}.vmdk"));
        qemu_img(&[
            &"convert",
            &"-O",
            &"vmdk",
            &"-o",
            &format!("subformat={sub}"),
            &raw,
            &p,
        ]);
        // What ESXi's and open-vmdk's exports write in the extent line.
        let text = vmdk::sparse::read_embedded_descriptor(&p).unwrap().unwrap();
        let line = text.lines().find(|l| l.starts_with("RW ")).unwrap();
        let quoted = line.split('"').nth(1).unwrap();
        let patched = text.replace(&format!("\"{quoted}\""), &format!("\"{name}\""));
        assert_ne!(patched, text);
        vmdk::sparse::write_embedded_descriptor(&p, &patched).unwrap();
        let mut d = Disk::open(&p, &OpenOptions::read_only()).unwrap();
        let mut got = vec![0u8; 1 << 20];
        d.read_at(0, &mut got).unwrap();
        assert!(got == std::fs::read(&raw).unwrap(), "{sub}");
        assert_eq!(vmdk::link_files(&p).unwrap(), vec![p.clone()]);
    }
}

#[test]
fn issue_10_one_sparse_file_in_many_extents_is_refused() {
    let dir = tempdir();
    let big = dir.path().join("big.vmdk");
    vmdk::create(&big, &CreateSpec::new(1 << 40, DiskFormat::MonoSparse)).unwrap();
    let mut text = String::from(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentSparse\"\n",
    );
    for _ in 0..1000 {
        text.push_str("RW 1 SPARSE \"big.vmdk\"\n");
    }
    let p = dir.path().join("many.vmdk");
    std::fs::write(&p, text).unwrap();
    let e = refusal(&p, &OpenOptions::read_only());
    assert!(e.contains("more than one sparse extent"), "{e}");
    assert!(matches!(
        Disk::open(&p, &OpenOptions::read_only()),
        Err(Error::Corrupt { .. })
    ));
}
