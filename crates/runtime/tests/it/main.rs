//! Integration tests of the runtime crate: real QEMU, a tiny guest built from Debian
//! packages (tests/guest/build.sh) that writes sequence-numbered blocks to its disk.
//! Figures are printed with a `figure:` prefix (see them with `--nocapture`).

mod live;
mod power;
mod quiesce;
mod util;
