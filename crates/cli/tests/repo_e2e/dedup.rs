//! Issue 11: an unchanged second backup stores under 1% of the first; two VMs cloned
//! from one template share its chunks.

use crate::store::Repo;
use crate::util::*;
use vmdk::DiskFormat;

const MB: u64 = 1 << 20;

/// Fills `disk` with `mb` MiB of random data (incompressible: what is stored is what is
/// new).
fn random_fill(disk: &std::path::Path, mb: u64, seed: u64) {
    let mut d = vmdk::Disk::open(disk, &vmdk::OpenOptions::writable()).unwrap();
    let mut x = seed | 1;
    let mut buf = vec![0u8; MB as usize];
    for i in 0..mb {
        for b in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        d.write_at(i * MB, &buf).unwrap();
    }
    d.close().unwrap();
}

fn stats(repo: &Repo, env: &Env, id: &str) -> serde_json::Value {
    repo.json(env, "show", &[id])["stats"].clone()
}

#[test]
fn issue_11_unchanged_backups_store_almost_nothing_and_clones_share_chunks() {
    let env = Env::new();
    let repo = Repo::local(&env, "repo");
    repo.init(&env);
    env.vm("template", &[(24 * MB, DiskFormat::Thin)], 1);
    let tdisk = disk_paths(&env, "template").remove(0);
    random_fill(&tdisk, 16, 42);
    repo.ok(
        &env,
        "vcbMounter",
        &["-a", "name:template", "-r", &repo.target()],
    );
    repo.ok(
        &env,
        "vcbMounter",
        &["-a", "name:template", "-r", &repo.target()],
    );
    let points = repo.points(&env);
    let first = stats(&repo, &env, points[0]["id"].as_str().unwrap());
    let second = stats(&repo, &env, points[1]["id"].as_str().unwrap());
    let (s1, s2) = (
        first["stored_bytes"].as_u64().unwrap(),
        second["stored_bytes"].as_u64().unwrap(),
    );
    eprintln!("figure: first backup stored {s1} bytes, unchanged second {s2} bytes");
    assert!(s1 >= 16 * MB, "{first}");
    assert!(
        s2 * 100 < s1,
        "the unchanged backup stored {s2} of {s1} bytes"
    );
    assert!(second["new_bytes"].as_u64().unwrap() < MB, "{second}");

    // A clone of the template: its first backup finds every chunk already there.
    env.vm("clone", &[(24 * MB, DiskFormat::Thin)], 2);
    let cdisk = disk_paths(&env, "clone").remove(0);
    let data = content(&tdisk);
    write(&cdisk, 0, &data);
    repo.ok(&env, "vcb", &["backup", "clone", "--repo", &repo.spec]);
    let points = repo.points(&env);
    let clone = points.iter().find(|p| p["vm"] == "clone").unwrap();
    let cs = stats(&repo, &env, clone["id"].as_str().unwrap());
    eprintln!("figure: clone's first backup: {cs}");
    assert!(cs["reused_bytes"].as_u64().unwrap() >= 16 * MB, "{cs}");
    assert!(cs["stored_bytes"].as_u64().unwrap() < MB, "{cs}");
    // Two groups, one copy of the template's data.
    let check = repo.json(&env, "check", &[]);
    assert_eq!(check["problems"].as_array().unwrap().len(), 0);
    let size: u64 = walk(&env.path("repo/chunks"))
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(
        size < 17 * MB,
        "chunks take {size} bytes for 16 MiB of unique data"
    );
}
