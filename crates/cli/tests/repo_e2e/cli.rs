//! Issue 11: the `vcb repo` commands' behaviour at the edges: passphrases, keys, JSON,
//! prune and gc, copy, refusals.

use crate::store::Repo;
use crate::util::*;
use vmdk::DiskFormat;

const MB: u64 = 1 << 20;

#[test]
fn issue_11_passphrases_keys_and_versions() {
    let env = Env::new();
    let repo = Repo::local(&env, "repo");
    repo.init(&env);
    let again = repo.fails(&env, "vcb", &["repo", "init", &repo.spec]);
    assert!(again.contains("refusing to initialize"), "{again}");
    // Wrong passphrase: one clear line.
    let wrong = env.path("wrong");
    std::fs::write(&wrong, "not it\n").unwrap();
    let err = repo.fails(
        &env,
        "vcb",
        &[
            "repo",
            "list",
            &repo.spec,
            "--password-file",
            wrong.to_str().unwrap(),
        ],
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("wrong passphrase"), "{err}");
    // No passphrase and no terminal: fail at once, never wait.
    let started = std::time::Instant::now();
    let out = env.run("vcb", &["repo", "list", &repo.spec]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no passphrase"),
        "{}",
        text(&out.stderr)
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // A second key; the first removed; the paper key opens it too.
    let second = env.path("second");
    std::fs::write(&second, "second passphrase").unwrap();
    let out = repo.ok(
        &env,
        "vcb",
        &[
            "repo",
            "key",
            "add",
            &repo.spec,
            "--new-password-file",
            second.to_str().unwrap(),
            "--label",
            "laptop",
        ],
    );
    assert!(out.starts_with("Added key "), "{out}");
    let keys: serde_json::Value =
        serde_json::from_str(&repo.ok(&env, "vcb", &["repo", "key", "list", &repo.spec, "--json"]))
            .unwrap();
    assert_eq!(keys.as_array().unwrap().len(), 2);
    let first_id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["label"] != "laptop")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    repo.ok(
        &env,
        "vcb",
        &["repo", "key", "remove", &repo.spec, &first_id],
    );
    let err = repo.fails(&env, "vcb", &["repo", "list", &repo.spec]);
    assert!(err.contains("wrong passphrase"), "{err}");
    let paper = env.ok_all(
        "vcb",
        &[
            "repo",
            "key",
            "paper",
            &repo.spec,
            "--password-file",
            second.to_str().unwrap(),
        ],
    );
    let paper_file = env.path("paper.txt");
    std::fs::write(&paper_file, paper.as_bytes()).unwrap();
    env.ok(
        "vcb",
        &[
            "repo",
            "list",
            &repo.spec,
            "--paper-key",
            paper_file.to_str().unwrap(),
        ],
    );
    let err = env.fails(
        "vcb",
        &[
            "repo",
            "key",
            "remove",
            &repo.spec,
            "",
            "--password-file",
            second.to_str().unwrap(),
        ],
    );
    assert!(err.contains("last key"), "{err}");
    // An unknown format version is refused by name.
    let cfg = env.path("repo/config");
    let text0 = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text0.replace("\"version\": 1", "\"version\": 7")).unwrap();
    let err = env.fails(
        "vcb",
        &[
            "repo",
            "list",
            &repo.spec,
            "--password-file",
            second.to_str().unwrap(),
        ],
    );
    assert!(err.contains("version 7 is not supported"), "{err}");
}

#[test]
fn issue_11_prune_gc_copy_and_unencrypted_repositories() {
    let env = Env::new();
    let repo = Repo::local(&env, "repo");
    repo.init(&env);
    env.vm("vm1", &[(4 * MB, DiskFormat::Thin)], 5);
    let disk = disk_paths(&env, "vm1").remove(0);
    for i in 0..4u8 {
        write(&disk, u64::from(i) * MB, &[i + 1; 65536]);
        repo.ok(
            &env,
            "vcbMounter",
            &["-a", "name:vm1", "-r", &repo.target()],
        );
    }
    assert_eq!(repo.points(&env).len(), 4);
    let dry = repo.json(&env, "prune", &["--keep-last", "2", "--dry-run"]);
    assert_eq!(
        dry.as_array()
            .unwrap()
            .iter()
            .filter(|d| d["keep"] == false)
            .count(),
        2
    );
    assert_eq!(repo.points(&env).len(), 4);
    let err = repo.fails(&env, "vcb", &["repo", "prune", &repo.spec]);
    assert!(err.contains("no --keep-"), "{err}");
    repo.ok(
        &env,
        "vcb",
        &["repo", "prune", &repo.spec, "--keep-last", "2"],
    );
    assert_eq!(repo.points(&env).len(), 2);
    let gc = repo.json(&env, "gc", &["--grace", "0s"]);
    assert!(gc["removed_objects"].as_u64().unwrap() > 0, "{gc}");
    let check = repo.json(&env, "check", &[]);
    assert_eq!(check["chunks_unused"], 0, "{check}");
    // Copy into an unencrypted repository: every point, then nothing more.
    let plain = env.path("plain");
    env.ok(
        "vcb",
        &[
            "repo",
            "init",
            plain.to_str().unwrap(),
            "--encryption",
            "none",
        ],
    );
    let out = repo.ok(
        &env,
        "vcb",
        &["repo", "copy", &repo.spec, plain.to_str().unwrap()],
    );
    assert!(
        out.starts_with("Copied 2 points (0 already there)"),
        "{out}"
    );
    let out = repo.ok(
        &env,
        "vcb",
        &["repo", "copy", &repo.spec, plain.to_str().unwrap()],
    );
    assert!(
        out.starts_with("Copied 0 points (2 already there)"),
        "{out}"
    );
    let listed = env.ok("vcb", &["repo", "list", plain.to_str().unwrap()]);
    assert!(listed.contains("2 points"), "{listed}");
    // The copy restores like the original.
    let src = format!("repo:{}#vm1", plain.display());
    for d in disk_paths(&env, "vm1") {
        write(&d, 0, b"scribbled");
    }
    let before_scribble = {
        let mut c = content(&disk);
        c[..9].copy_from_slice(&[1u8; 9]);
        c
    };
    env.ok("vcbRestore", &["-s", &src, "-l", "overwrite"]);
    assert_eq!(content(&disk_paths(&env, "vm1")[0]), before_scribble);
    let v = env.ok("vcb", &["repo", "verify", plain.to_str().unwrap()]);
    assert!(v.contains("no damage"), "{v}");
}
