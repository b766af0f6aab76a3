//! Guest file systems, read-only and in user space: a disk's partitions (MBR, GPT), LVM2
//! logical volumes on them, and the FAT, NTFS, ext2/3/4 and XFS file systems inside.
//!
//! A hostile guest controls every byte read here: nothing trusts a length, offset or count
//! without checking it against the volume, walks are bounded, and every failure is an
//! [`Error`] for the one file or volume concerned. The host kernel never mounts these.

mod device;
mod error;
pub mod ext4;
pub mod fat;
pub mod lvm;
pub mod lznt1;
pub mod ntfs;
pub mod part;
mod runs;
pub mod vfs;
mod volumes;
pub mod xfs;

pub use device::{Device, DiskDevice, FileDevice, MemDevice, Slice};
pub use error::{Error, Result};
pub use vfs::{lookup, walk, Attr, DirEntry, FileSystem, Kind, Time, Walked};
pub use volumes::{open_file_system, volumes, Volume};

/// Entry points for the fuzz targets (not an API): open `data` as one kind of volume and
/// read everything in it, with the same bounds as real use.
#[doc(hidden)]
pub mod fuzzing {
    use crate::{Device, FileSystem, MemDevice};
    use std::sync::Arc;

    /// Which reader to feed.
    #[derive(Clone, Copy, Debug)]
    pub enum Reader {
        /// Partition tables and LVM, then whatever file systems they hold.
        Volumes,
        /// ext2/3/4.
        Ext4,
        /// XFS.
        Xfs,
        /// FAT.
        Fat,
        /// NTFS.
        Ntfs,
    }

    /// The `ntfs` crate panics on some malformed structures (slice indexing,
    /// `unreachable!`); guestfs contains those with `catch_unwind` per operation. libFuzzer's
    /// panic hook would abort on them anyway, so this hook lets panics located in that crate
    /// unwind to guestfs and passes every other panic to the hook it replaces (a finding).
    pub fn contain_ntfs_crate_panics() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let fuzzer_hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let in_crate = info
                    .location()
                    .is_some_and(|l| l.file().contains("/ntfs-0."));
                if !in_crate {
                    fuzzer_hook(info);
                }
            }));
        });
    }

    /// Open `data` with `reader` and read every directory, file and link.
    pub fn exercise(reader: Reader, data: &[u8]) {
        let dev: Arc<dyn Device> = Arc::new(MemDevice(data.to_vec()));
        let fs: Option<Arc<dyn FileSystem>> = match reader {
            Reader::Volumes => {
                if let Ok(vols) = crate::volumes(&[dev]) {
                    for v in vols {
                        if let Ok(fs) = v.fs {
                            read_all(fs.as_ref());
                        }
                    }
                }
                None
            }
            Reader::Ext4 => crate::ext4::Ext4::open(dev).ok().map(|f| Arc::new(f) as _),
            Reader::Xfs => crate::xfs::Xfs::open(dev).ok().map(|f| Arc::new(f) as _),
            Reader::Fat => crate::fat::Fat::open(dev).ok().map(|f| Arc::new(f) as _),
            Reader::Ntfs => crate::ntfs::Ntfs::open(dev).ok().map(|f| Arc::new(f) as _),
        };
        if let Some(fs) = fs {
            read_all(fs.as_ref());
        }
    }

    fn read_all(fs: &dyn FileSystem) {
        let mut found = Vec::new();
        crate::walk(fs, fs.root(), &mut |w| {
            if let Ok((_, a)) = w {
                found.push(a);
            }
        });
        let mut buf = vec![0u8; 64 * 1024];
        for a in found.iter().take(4096) {
            let _ = fs.read_link(a.ino);
            let _ = fs.data_ranges(a.ino);
            let _ = fs.read(a.ino, 0, &mut buf);
            let _ = fs.read(a.ino, a.size.saturating_sub(100), &mut buf);
        }
    }
}
