//! `vcbVmName` and `vcbUtil` through the real binaries.

mod host_util;

use host_util::Env;

const VM_NAME: &str = env!("CARGO_BIN_EXE_vcbVmName");
const UTIL: &str = env!("CARGO_BIN_EXE_vcbUtil");

/// A host with two VMs: `Virtual Machine 37` (10.17.5.31) and `db01` (no address,
/// suspended).
fn two_vms() -> (Env, String, String) {
    let env = Env::new();
    env.ok(&[
        "vm",
        "create",
        "Virtual Machine 37",
        "--disk",
        "1m",
        "--format",
        "thin",
        "--ip",
        "10.17.5.31",
    ]);
    env.ok(&["vm", "create", "db01", "--disk", "1m", "--format", "thin"]);
    std::fs::write(env.vm_dir("db01").join("db01.vmss"), "").unwrap();
    let h = host::Host::open(&env.root).unwrap();
    let uuid = |n: &str| h.find_vm(n).unwrap().uuid().unwrap().to_string();
    let (a, b) = (uuid("Virtual Machine 37"), uuid("db01"));
    (env, a, b)
}

fn vm_name(env: &Env, args: &[&str]) -> String {
    let o = env.run(VM_NAME, args);
    env.check_ok(&format!("vcbVmName {}", args.join(" ")), &o)
}

fn block(moref: u32, name: &str, uuid: &str, ip: &str) -> String {
    format!("Found VM:\nmoref:{moref}\nname:{name}\nuuid:{uuid}\nipaddr:{ip}\n")
}

#[test]
fn vcbvmname_finds_by_every_specifier() {
    let (env, u37, udb) = two_vms();
    let vm37 = block(16, "Virtual Machine 37", &u37, "10.17.5.31");
    let db01 = block(17, "db01", &udb, "");
    assert_eq!(vm_name(&env, &["-s", "name:Virtual Machine 37"]), vm37);
    assert_eq!(vm_name(&env, &["-s", "ipaddr:10.17.5.31"]), vm37);
    assert_eq!(
        vm_name(&env, &["-s", &format!("uuid:{}", u37.to_uppercase())]),
        vm37
    );
    let spaced: vmx::Uuid = udb.parse().unwrap();
    assert_eq!(
        vm_name(&env, &["-s", &format!("uuid:{}", spaced.to_vmx_string())]),
        db01
    );
    assert_eq!(vm_name(&env, &["-s", "moref:17"]), db01);
    assert_eq!(
        vm_name(
            &env,
            &["-s", "moref:/vmfs/volumes/datastore1/db01/db01.vmx"]
        ),
        db01
    );
    let abs = env
        .vm_dir("Virtual Machine 37")
        .join("Virtual Machine 37.vmx");
    assert_eq!(
        vm_name(&env, &["-s", &format!("moref:{}", abs.display())]),
        vm37
    );
    assert_eq!(vm_name(&env, &["-s", "powerstate:off"]), vm37);
    assert_eq!(vm_name(&env, &["-s", "powerstate:suspended"]), db01);
    assert_eq!(vm_name(&env, &["-s", "powerstate:on"]), "");
    assert_eq!(vm_name(&env, &["-s", "any:"]), format!("{vm37}{db01}"));
    assert_eq!(vm_name(&env, &["-s", "none:"]), "");
    assert_eq!(
        vm_name(
            &env,
            &[
                "-s",
                "any:",
                "-h",
                "localhost",
                "-u",
                "root",
                "-p",
                "pw",
                "-L",
                "6"
            ]
        ),
        format!("{vm37}{db01}")
    );
}

#[test]
fn vcbvmname_ipaddr_resolves_names_and_reads_the_name_cache() {
    let env = Env::new();
    env.ok(&[
        "vm",
        "create",
        "local",
        "--disk",
        "1m",
        "--format",
        "thin",
        "--ip",
        "127.0.0.1",
    ]);
    env.ok(&["vm", "create", "cached", "--disk", "1m", "--format", "thin"]);
    let h = host::Host::open(&env.root).unwrap();
    let u = h.find_vm("cached").unwrap().uuid().unwrap();
    // A DNS name is resolved first (localhost -> 127.0.0.1).
    assert!(vm_name(&env, &["-s", "ipaddr:localhost"]).contains("name:local\n"));
    // The cache named with -c.
    let cache = env.dir.path().join("vmnamecache");
    host::namecache::record(&cache, "cached", Some(&u), Some("10.9.8.7")).unwrap();
    let out = vm_name(
        &env,
        &["-s", "ipaddr:10.9.8.7", "-c", cache.to_str().unwrap()],
    );
    assert_eq!(out, block(17, "cached", &u.to_string(), "10.9.8.7"));
    // The cache named by VMNAMECACHE in backuptools.conf.
    let conf = env.dir.path().join("backuptools.conf");
    std::fs::write(
        &conf,
        format!(
            "VCHOST=\"localhost\"\nVMNAMECACHE=\"{}\"\n",
            cache.display()
        ),
    )
    .unwrap();
    let out = vm_name(
        &env,
        &["-s", "ipaddr:10.9.8.7", "--config", conf.to_str().unwrap()],
    );
    assert!(out.contains("name:cached\n"), "{out}");
    // Without the cache the powered-off VM has no known address.
    let o = env.run(VM_NAME, &["-s", "ipaddr:10.9.8.7"]);
    let err = env.check_fails("vcbVmName without cache", &o);
    assert!(
        err.contains("no virtual machine matches ipaddr:10.9.8.7"),
        "{err}"
    );
}

#[test]
fn vcbvmname_errors_are_clear() {
    let (env, _, _) = two_vms();
    for (spec, expect) in [
        ("color:blue", "unknown kind \"color\""),
        ("vm37", "expected KIND:VALUE"),
        ("uuid:1234", "invalid UUID"),
        ("powerstate:asleep", "expected on, off or suspended"),
        ("name:nobody", "no virtual machine matches name:nobody"),
    ] {
        let o = env.run(VM_NAME, &["-s", spec]);
        let err = env.check_fails(spec, &o);
        assert!(err.contains(expect), "{spec}: expected {expect:?} in {err}");
    }
    // A host agent nobody runs (a closed port on loopback): one clear line.
    let o = env.run(
        VM_NAME,
        &[
            "-s",
            "any:",
            "-h",
            "https://127.0.0.1:1",
            "-u",
            "u",
            "-p",
            "x",
        ],
    );
    assert!(env
        .check_fails("-h remote", &o)
        .contains("connection refused (is `vcb hostd` running there?)"));
    let o = env.run(VM_NAME, &["--help"]);
    assert!(env.check_ok("--help", &o).contains("-s <SPEC>"));
}

#[test]
fn vcbutil_lists_folders_pools_datastores_and_pings() {
    let env = Env::new();
    env.ok(&["folder", "create", "/Production/Web"]);
    env.ok(&["pool", "create", "Gold"]);
    let util = |c: &str| {
        let o = env.run(UTIL, &["-c", c]);
        env.check_ok(&format!("vcbUtil -c {c}"), &o)
    };
    assert_eq!(
        util("vmfolders"),
        "/ha-datacenter/vm\n/ha-datacenter/vm/Production\n/ha-datacenter/vm/Production/Web\n"
    );
    assert_eq!(
        util("resourcepools"),
        "/ha-datacenter/host/esx1/Resources\n/ha-datacenter/host/esx1/Resources/Gold\n"
    );
    let ds = env.root.join("volumes/datastore1");
    assert_eq!(
        util("datastores"),
        format!("datastore1\t{}\n", ds.display())
    );
    assert!(util("ping").starts_with("Ping succeeded: standalone host esx1"));
    let o = env.run(
        UTIL,
        &[
            "-c",
            "vmfolders",
            "-h",
            "https://127.0.0.1:1",
            "-u",
            "root",
            "-p",
            "x",
        ],
    );
    assert!(env.check_fails("remote", &o).contains("connection refused"));
    let o = env.run(UTIL, &["-c", "bogus"]);
    assert!(!o.status.success());
    let o = env
        .command_at(UTIL, &env.dir.path().join("nowhere"), &["-c", "ping"])
        .output()
        .unwrap();
    assert!(env
        .check_fails("ping without host", &o)
        .contains("no host here"));
}
