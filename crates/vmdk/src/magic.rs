//! Every magic number and fixed layout constant of the formats, with its source.
//! Never change these: they are on-disk facts.

/// Sector size. All VMDK offsets and sizes in headers and descriptors are in 512-byte sectors.
pub const SECTOR: u64 = 512;

/// Hosted sparse extent magic "KDMV" (VMware Virtual Disk Format 1.1, §"Hosted Sparse Extent Header").
pub const KDMV_MAGIC: [u8; 4] = *b"KDMV";
/// ESX redo-log (vmfsSparse) extent magic "COWD" (qemu block/vmdk.c, VMDK3_MAGIC).
pub const COWD_MAGIC: [u8; 4] = *b"COWD";
/// Start of every text descriptor written by VMware and qemu.
pub const DESCRIPTOR_SIGNATURE: &str = "# Disk DescriptorFile";

/// Newline-detection bytes stored at offset 73 of a KDMV header ("\n \r\n").
pub const KDMV_NEWLINE_TEST: [u8; 4] = [0x0A, 0x20, 0x0D, 0x0A];
/// KDMV flag: the newline test bytes are valid.
pub const KDMV_FLAG_NEWLINE_VALID: u32 = 0x1;
/// KDMV flag: a redundant grain directory is maintained.
pub const KDMV_FLAG_REDUNDANT_GD: u32 = 0x2;
/// KDMV flag: grain table entry 1 means "zeroed grain" (reads zero, no fall-through).
pub const KDMV_FLAG_ZEROED_GTE: u32 = 0x4;
/// KDMV flag: grains are compressed.
pub const KDMV_FLAG_COMPRESSED: u32 = 0x1_0000;
/// KDMV flag: the file contains stream markers.
pub const KDMV_FLAG_MARKERS: u32 = 0x2_0000;
/// gdOffset value meaning "the grain directory is at the end, find the footer".
pub const KDMV_GD_AT_END: u64 = u64::MAX;
/// Grain table entries per table in KDMV extents (the only value anyone writes).
pub const KDMV_GTES_PER_GT: u64 = 512;
/// Default grain size in sectors (64 KiB).
pub const DEFAULT_GRAIN_SECTORS: u64 = 128;
/// Descriptor space qemu and VMware reserve inside a monolithic sparse file, in sectors.
pub const EMBEDDED_DESCRIPTOR_SECTORS: u64 = 20;

/// Stream marker type: end of stream.
pub const MARKER_EOS: u32 = 0;
/// Stream marker type: grain table follows.
pub const MARKER_GT: u32 = 1;
/// Stream marker type: grain directory follows.
pub const MARKER_GD: u32 = 2;
/// Stream marker type: footer (copy of the header) follows.
pub const MARKER_FOOTER: u32 = 3;

/// COWD format version, the only one that exists (qemu block/vmdk.c, `VMDK3Header.version`;
/// vmkernel `cow_ext.h`, `COWDISK_VERSION`).
pub const COWD_VERSION: u32 = 1;
/// COWD header size in bytes.
pub const COWD_HEADER_BYTES: u64 = 2048;
/// COWD grain table entries per table.
pub const COWD_GTES_PER_GT: u64 = 4096;

/// `parentCID` value meaning "no parent".
pub const CID_NO_PARENT: u32 = 0xffff_ffff;

/// Largest extent size a split (2gb) disk uses: qemu splits at exactly 2 GiB.
pub const SPLIT_EXTENT_BYTES: u64 = 2 << 30;

/// Largest capacity accepted anywhere (64 TiB, VMFS-6's limit is 62 TiB).
pub const MAX_CAPACITY_BYTES: u64 = 64 << 40;
