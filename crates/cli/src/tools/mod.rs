//! The VMware-compatible tools, each a thin front end over the same command code.

pub mod conf;
pub mod filemount;
pub mod filemount_proxy;
pub mod vcbmounter;
pub mod vcbrestore;
pub mod vcbsnapall;
pub mod vcbutil;
pub mod vcbvmname;
pub mod vmkfstools;
