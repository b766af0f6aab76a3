//! backuptools.conf through vcbMounter: shell syntax, overrides, injection, warnings.

use crate::util::*;
use std::os::unix::fs::PermissionsExt;
use vmdk::DiskFormat;

fn conf(env: &Env, text: &str, mode: u32) -> String {
    let p = env.path("backuptools.conf");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn conf_is_evaluated_by_the_shell_and_values_stay_values() {
    let env = Env::new();
    env.vm("vm1", &[(1 << 20, DiskFormat::Thin)], 4);
    let dir = env.path("");
    let d = dir.to_str().unwrap();
    let file = conf(
        &env,
        &format!(
            "# backuptools.conf\nBASE=\"{d}\"   # a comment\nVCHOST='localhost'\nUSERNAME=\"admin\"\nVMNAMECACHE=$(echo \"$BASE\")/names\\ cache\nTEMPDIR=$BASE/tmp\n"
        ),
        0o600,
    );
    let out = env.run(
        "vcbMounter",
        &[
            "-a",
            "name:vm1",
            "-r",
            env.path("b1").to_str().unwrap(),
            "--config",
            &file,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("warning"),
        "no password, no warning"
    );
    let cache = std::fs::read_to_string(dir.join("names cache")).unwrap();
    assert!(
        cache.starts_with("vm1\t") && cache.contains("10.0.0.4"),
        "{cache}"
    );

    // An injection attempt: the value is used as a string, never evaluated again.
    let pwned = env.path("pwned");
    let file = conf(
        &env,
        &format!(
            "VCHOST='localhost; touch {0}'\nPASSWORD='$(touch {0})'\n",
            pwned.display()
        ),
        0o644,
    );
    let out = env.run_env(
        "vcbMounter",
        &["-a", "name:vm1", "-r", env.path("b2").to_str().unwrap()],
        &[("VCB_CONF", &file)],
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("expected https://HOST[:PORT]"), "{err}");
    assert!(err.contains("readable by other users"), "{err}");
    assert!(!pwned.exists(), "nothing from the file's values ran");

    // -h overrides VCHOST.
    let out = env.run_env(
        "vcbMounter",
        &[
            "-a",
            "name:vm1",
            "-r",
            env.path("b3").to_str().unwrap(),
            "-h",
            "localhost",
        ],
        &[("VCB_CONF", &file)],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!pwned.exists());
}
