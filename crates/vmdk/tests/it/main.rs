//! Integration tests of the vmdk crate, most against qemu-img as the outside oracle.

mod util;

mod bad_input;
mod ctk;
mod hostile;
mod model;
mod qemu_reads_ours;
mod we_read_qemu;
