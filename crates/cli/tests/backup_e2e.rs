//! End-to-end tests of vcbMounter, vcbSnapAll, vcbRestore, `vcb backup|restore|demo`
//! through the real binaries, each in its own temporary host (issue 4).

#[path = "backup_e2e/util.rs"]
mod util;

#[path = "backup_e2e/conf.rs"]
mod conf;
#[path = "backup_e2e/crash.rs"]
mod crash;
#[path = "backup_e2e/hostile.rs"]
mod hostile;
#[path = "backup_e2e/incremental.rs"]
mod incremental;
#[path = "backup_e2e/refuse.rs"]
mod refuse;
#[path = "backup_e2e/roundtrip.rs"]
mod roundtrip;
#[path = "backup_e2e/safety.rs"]
mod safety;
#[path = "backup_e2e/snapall.rs"]
mod snapall;
