//! Issue 11: a VM with two disks (thin and zeroedthick) and a user snapshot, backed up
//! three times into a repository with guest-visible changes between; every point
//! restores to exactly the disks of its time (`qemu-img compare`), with holes and
//! provisioning kept. The same suite runs on a local folder, over SFTP and on S3
//! (SeaweedFS).

use crate::store::Repo;
use crate::util::*;
use vmdk::DiskFormat;

const MB: u64 = 1 << 20;

/// Restores point `id` of `repo` to `[datastore1] <folder>/` through `vcbRestore -a`.
pub fn restore_point_to(env: &Env, repo: &Repo, id: &str, folder: &str) -> Vec<std::path::PathBuf> {
    let shown = repo.json(env, "show", &[id]);
    let text = shown["catalog"].as_str().unwrap();
    let mut c = vmx::Catalog::from_dict(&vmx::Dict::parse(text).unwrap()).unwrap();
    let dp = vmx::DatastorePath::new("datastore1", &format!("{folder}/")).unwrap();
    retarget(&mut c, &dp, folder, &["a.vmdk", "b.vmdk"]);
    let alt = env.path(&format!("alt-{folder}"));
    write_catalog(&alt, &c);
    let src = format!("{}#{id}", repo.target());
    let out = repo.ok(
        env,
        "vcbRestore",
        &["-s", &src, "-a", alt.to_str().unwrap(), "-l", "abort"],
    );
    assert!(out.contains("Restored"), "{out}");
    let vm = registered(env, &format!("[datastore1] {folder}/{folder}.vmx"));
    vm.disks(&env.host())
        .unwrap()
        .into_iter()
        .map(|d| d.path)
        .collect()
}

/// Bytes a disk holds as data (its holes not counted).
fn allocated(disk: &std::path::Path) -> u64 {
    let mut d = vmdk::Disk::open(disk, &vmdk::OpenOptions::read_only()).unwrap();
    d.allocation()
        .unwrap()
        .iter()
        .filter(|r| r.state == vmdk::BlockState::Data)
        .map(|r| r.len)
        .sum()
}

fn three_points_restore_exactly(env: &Env, repo: &Repo) {
    require_tool("qemu-img");
    let tops = vm37_with_snapshot(env);
    repo.init(env);
    let mut expected: Vec<Vec<Vec<u8>>> = Vec::new();
    // 1: vcbMounter; 2: vcb backup --repo; 3: vcbSnapAll. Guest-visible changes between.
    expected.push(tops.iter().map(|p| content(p)).collect());
    repo.ok(
        env,
        "vcbMounter",
        &["-a", "name:vm37", "-r", &repo.target()],
    );
    let tops = disk_paths(env, "vm37");
    write(&tops[0], 5 * MB + 4096, b"second generation");
    write(&tops[1], 2 * MB, &[0xAB; 70_000]);
    expected.push(tops.iter().map(|p| content(p)).collect());
    repo.ok(env, "vcb", &["backup", "vm37", "--repo", &repo.spec]);
    let tops = disk_paths(env, "vm37");
    write(&tops[0], 0, &[0x5A; 3 * 65536]);
    expected.push(tops.iter().map(|p| content(p)).collect());
    let out = repo.ok(
        env,
        "vcbSnapAll",
        &["-a", "name:vm37", "-r", &repo.target()],
    );
    assert!(out.contains("1 of 1 VMs backed up"), "{out}");
    // The VM keeps its user snapshot and nothing of the backups.
    let h = env.host();
    let vm = h.find_vm("vm37").unwrap();
    let db = host::read_vmsd(&vm.vmsd_path()).unwrap();
    assert_eq!(db.snapshots().len(), 1);

    let points = repo.points(env);
    assert_eq!(points.len(), 3, "{points:?}");
    for (i, (p, want)) in points.iter().zip(&expected).enumerate() {
        let id = p["id"].as_str().unwrap();
        assert_eq!(p["vm"], "vm37");
        let restored = restore_point_to(env, repo, id, &format!("r{i}"));
        for (disk, want) in restored.iter().zip(want) {
            let raw = env.path(&format!(
                "expected-{i}-{}.raw",
                disk.file_name().unwrap().to_string_lossy()
            ));
            std::fs::write(&raw, want).unwrap();
            qemu_same(&raw, disk);
        }
        let fmt =
            |p: &std::path::Path| DiskFormat::of_descriptor(&vmdk::read_descriptor(p).unwrap().0);
        assert_eq!(fmt(&restored[0]), Some(DiskFormat::Thin));
        assert_eq!(fmt(&restored[1]), Some(DiskFormat::ZeroedThick));
        // Holes stay holes: the thin disk holds its data, not its 8 MiB.
        let data = allocated(&restored[0]);
        assert!(
            data <= 3 * MB,
            "thin disk restored with {data} bytes allocated"
        );
    }
    let check = repo.json(env, "check", &[]);
    assert_eq!(check["problems"].as_array().unwrap().len(), 0, "{check}");
    let verify = repo.json(env, "verify", &[]);
    assert_eq!(verify["damage"].as_array().unwrap().len(), 0, "{verify}");
}

#[test]
fn issue_11_three_points_restore_exactly_from_a_local_repository() {
    let env = Env::new();
    let repo = Repo::local(&env, "repo");
    three_points_restore_exactly(&env, &repo);
}

#[test]
fn issue_11_three_points_restore_exactly_over_sftp() {
    let env = Env::new();
    let Some(repo) = Repo::sftp(&env) else { return };
    three_points_restore_exactly(&env, &repo);
}

#[test]
fn issue_11_three_points_restore_exactly_from_seaweedfs() {
    let env = Env::new();
    let Some(repo) = Repo::s3(&env) else { return };
    three_points_restore_exactly(&env, &repo);
}

#[test]
fn issue_11_restore_in_place_and_export_to_a_folder() {
    let env = Env::new();
    let repo = Repo::local(&env, "repo");
    let tops = vm37_with_snapshot(&env);
    let before: Vec<Vec<u8>> = tops.iter().map(|p| content(p)).collect();
    repo.init(&env);
    repo.ok(
        &env,
        "vcbMounter",
        &["-a", "name:vm37", "-r", &repo.target()],
    );
    for t in disk_paths(&env, "vm37") {
        write(&t, 0, b"changed after the backup");
    }
    // In place, the latest point of the VM by name, replacing what is there.
    let src = format!("{}#vm37", repo.target());
    let err = repo.fails(&env, "vcbRestore", &["-s", &src, "-l", "abort"]);
    assert!(err.contains("already exists"), "{err}");
    repo.ok(&env, "vcb", &["restore", &src, "-l", "overwrite"]);
    let now: Vec<Vec<u8>> = disk_paths(&env, "vm37")
        .iter()
        .map(|p| content(p))
        .collect();
    assert_eq!(now, before);
    assert_eq!(env.host().entries().len(), 1);
    // Export: a classic folder that vcbRestore reads like any other.
    let dir = env.path("exported");
    let out = repo.ok(
        &env,
        "vcb",
        &["repo", "export", &repo.spec, "vm37", dir.to_str().unwrap()],
    );
    assert!(out.contains("Exported vm37"), "{out}");
    let c = catalog(&dir);
    assert!(
        c.files.iter().any(|f| f.name == "scsi0-0-0-vm37.vmdk"),
        "{c:?}"
    );
    if require_tool("qemu-img") {
        qemu_same(
            &dir.join("scsi0-0-0-vm37.vmdk"),
            &disk_paths(&env, "vm37")[0],
        );
    }
    let mut c = catalog(&dir);
    let dp = vmx::DatastorePath::new("datastore1", "fromfolder/").unwrap();
    retarget(&mut c, &dp, "fromfolder", &["a.vmdk", "b.vmdk"]);
    restore_with_catalog(&env, "vcbRestore", &dir, &c);
    let vm = registered(&env, "[datastore1] fromfolder/fromfolder.vmx");
    let got: Vec<Vec<u8>> = vm
        .disks(&env.host())
        .unwrap()
        .iter()
        .map(|d| content(&d.path))
        .collect();
    assert_eq!(got, before);
}
