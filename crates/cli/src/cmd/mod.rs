//! `vcb` subcommands, one module per noun.

pub mod agent;
pub mod backup;
pub mod datastore;
pub mod disk;
pub mod files;
pub mod folder;
pub mod host;
pub mod repo;
pub mod vm;
