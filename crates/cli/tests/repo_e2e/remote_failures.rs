//! Issue 11: remote storage failing under a backup: a full SFTP server, S3 refusals, and
//! one SeaweedFS volume server killed in the middle of a backup. Each backup completes or
//! fails with one clear line, and the repository still checks clean.

use crate::store::Repo;
use crate::util::*;
use vmdk::DiskFormat;

const MB: u64 = 1 << 20;

fn assert_clean(env: &Env, repo: &Repo) {
    let check = repo.json(env, "check", &[]);
    assert_eq!(check["problems"].as_array().unwrap().len(), 0, "{check}");
}

#[test]
fn issue_11_a_full_sftp_server_fails_cleanly() {
    let env = Env::new();
    let quirks = testkit::sshd::Quirks {
        file_size_limit: Some(512 << 10),
        ..Default::default()
    };
    let Some(repo) = Repo::sftp_with(&env, quirks) else {
        return;
    };
    repo.init(&env);
    env.vm("vm1", &[(4 * MB, DiskFormat::Thin)], 2);
    write(&disk_paths(&env, "vm1")[0], 0, &random_bytes(3 * MB, 5));
    let err = repo.fails(
        &env,
        "vcbMounter",
        &["-a", "name:vm1", "-r", &repo.target()],
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("full") || err.contains("limit"), "{err}");
    assert!(repo.points(&env).is_empty());
    assert_clean(&env, &repo);
}

#[test]
fn issue_11_s3_refusals_are_one_clear_line() {
    let env = Env::new();
    let Some(repo) = Repo::s3(&env) else { return };
    repo.init(&env);
    let out = env.run_env(
        "vcb",
        &["repo", "list", &repo.spec],
        &[
            (
                "AWS_ENDPOINT_URL",
                &repo
                    .vars()
                    .iter()
                    .find(|v| v.0 == "AWS_ENDPOINT_URL")
                    .unwrap()
                    .1,
            ),
            ("AWS_ACCESS_KEY_ID", "vcbtest"),
            ("AWS_SECRET_ACCESS_KEY", "wrong"),
            ("AWS_REGION", "us-east-1"),
            (
                "VCB_PASSWORD_FILE",
                env.path("passphrase").to_str().unwrap(),
            ),
        ],
    );
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("access denied"), "{err}");
    let err = repo.fails(&env, "vcb", &["repo", "list", "s3://no-such-bucket/repo"]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("no-such-bucket") && err.contains("bucket does not exist"),
        "{err}"
    );
}

#[test]
fn issue_11_a_volume_server_killed_during_a_backup() {
    let env = Env::new();
    let Some(mut repo) = Repo::s3(&env) else {
        return;
    };
    repo.ok(
        &env,
        "vcb",
        &[
            "repo",
            "init",
            &repo.spec.clone(),
            "--kdf-memory-mib",
            "8",
            "--kdf-iterations",
            "1",
            "--chunk-size",
            "1048576",
        ],
    );
    env.vm("vm1", &[(48 * MB, DiskFormat::Thin)], 2);
    let data = random_bytes(40 * MB, 11);
    write(&disk_paths(&env, "vm1")[0], 0, &data);
    let mut cmd = env.command("vcbMounter", &["-a", "name:vm1", "-r", &repo.target()]);
    for (k, v) in repo.vars() {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let some chunks land first.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    repo.cluster().kill_volume(1);
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    eprintln!(
        "backup beside the killed volume server: {}\n{}{err}",
        out.status,
        text(&out.stdout)
    );
    if out.status.success() {
        let v = repo.json(&env, "verify", &[]);
        assert_eq!(v["damage"].as_array().unwrap().len(), 0, "{v}");
    } else {
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(repo.points(&env).is_empty());
    }
    assert_clean(&env, &repo);
    // The cluster carries on with two racks: the next backup succeeds and verifies.
    repo.ok(
        &env,
        "vcbMounter",
        &["-a", "name:vm1", "-r", &repo.target()],
    );
    let v = repo.json(&env, "verify", &[]);
    assert_eq!(v["damage"].as_array().unwrap().len(), 0, "{v}");
    assert_clean(&env, &repo);
    let points = repo.points(&env);
    let id = points.last().unwrap()["id"].as_str().unwrap().to_owned();
    write(&disk_paths(&env, "vm1")[0], 0, b"scribbled");
    let src = format!("{}#{id}", repo.target());
    repo.ok(&env, "vcbRestore", &["-s", &src, "-l", "overwrite"]);
    assert_eq!(
        &content(&disk_paths(&env, "vm1")[0])[..data.len()],
        &data[..]
    );
}
