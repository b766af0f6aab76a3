//! Issue 11: the deduplicating repository through the real tools, on a local folder, a
//! real OpenSSH server and a real SeaweedFS cluster.

#[path = "backup_e2e/util.rs"]
#[allow(dead_code)]
mod util;

#[path = "repo_e2e/store.rs"]
#[allow(dead_code)]
mod store;

#[path = "repo_e2e/remote_failures.rs"]
mod remote_failures;
#[path = "repo_e2e/roundtrip.rs"]
mod roundtrip;

#[path = "repo_e2e/cli.rs"]
mod cli;
#[path = "repo_e2e/concurrency.rs"]
mod concurrency;
#[path = "repo_e2e/damage.rs"]
mod damage;
#[path = "repo_e2e/dedup.rs"]
mod dedup;
#[path = "repo_e2e/tracking.rs"]
mod tracking;
