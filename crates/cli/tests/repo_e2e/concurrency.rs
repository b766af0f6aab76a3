//! Issue 11: four backups at once (four VMs, each backed up five times), while prune
//! and gc run in a loop beside them: afterwards check and verify find nothing missing,
//! and the latest point of every VM restores to its disk.

use crate::store::Repo;
use crate::util::*;
use vmdk::DiskFormat;

const MB: u64 = 1 << 20;

#[test]
fn issue_11_four_backups_with_prune_and_gc_lose_nothing() {
    let env = Env::new();
    let repo = Repo::local(&env, "repo");
    repo.init(&env);
    let names = ["c1", "c2", "c3", "c4"];
    for (i, n) in names.iter().enumerate() {
        env.vm(n, &[(6 * MB, DiskFormat::Thin)], 10 + i as u8);
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let (mut prunes, mut gcs, mut removed) = (0, 0, 0u64);
    std::thread::scope(|s| {
        let workers: Vec<_> = names
            .iter()
            .map(|n| {
                let (env, repo) = (&env, &repo);
                s.spawn(move || {
                    for round in 0..5u8 {
                        let disk = disk_paths(env, n).remove(0);
                        write(&disk, u64::from(round) * MB, &[round + 1; 100_000]);
                        repo.ok(
                            env,
                            "vcbMounter",
                            &["-a", &format!("name:{n}"), "-r", &repo.target()],
                        );
                    }
                })
            })
            .collect();
        while !workers.iter().all(|w| w.is_finished()) {
            repo.ok(
                &env,
                "vcb",
                &["repo", "prune", &repo.spec, "--keep-last", "1"],
            );
            prunes += 1;
            let gc = repo.json(&env, "gc", &["--grace", "0s"]);
            removed += gc["removed_objects"].as_u64().unwrap();
            gcs += 1;
        }
        for w in workers {
            w.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    eprintln!("figure: 20 backups beside {prunes} prunes and {gcs} collections ({removed} objects removed meanwhile)");
    assert!(
        gcs >= 2 && removed > 0,
        "the collector never ran beside the backups"
    );
    // One more collection with nothing running, then everything must add up.
    repo.ok(&env, "vcb", &["repo", "gc", &repo.spec, "--grace", "0s"]);
    let check = repo.json(&env, "check", &[]);
    assert_eq!(check["problems"].as_array().unwrap().len(), 0, "{check}");
    assert_eq!(check["sessions"], 0, "{check}");
    let verify = repo.json(&env, "verify", &[]);
    assert_eq!(verify["damage"].as_array().unwrap().len(), 0, "{verify}");
    for n in names {
        let now = content(&disk_paths(&env, n)[0]);
        let src = format!("{}#{n}", repo.target());
        for d in disk_paths(&env, n) {
            write(&d, 0, b"scribble");
        }
        repo.ok(&env, "vcbRestore", &["-s", &src, "-l", "overwrite"]);
        assert_eq!(content(&disk_paths(&env, n)[0]), now, "{n}");
    }
}
