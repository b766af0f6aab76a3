#!/usr/bin/env bash
# Writes small seed inputs for every fuzz target into fuzz/corpus/<target>/ (git-ignored):
# COWD headers and files built byte by byte, hosted sparse / streamOptimized files and text
# descriptors from qemu-img (skipped without it), and the .vmx / .vmsd samples of the vmx
# crate's tests. Run from anywhere; needs python3.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
corpus="$here/corpus"
mkdir -p "$corpus"/{cowd_header,sparse_header,descriptor,vmx_dict}

python3 - "$corpus/cowd_header" <<'EOF'
import struct, sys
out = sys.argv[1]
def cowd(num_sectors, gran, gd, free, flags=3, parent=b"", grains=(), unclean=0):
    """Header (4 sectors), GD at sector 4, then GTs and grains placed by the caller."""
    h = bytearray(2048)
    h[0:4] = b"COWD"
    n_gd = len(gd)
    struct.pack_into("<7I", h, 4, 1, flags, num_sectors, gran, 4, n_gd, free)
    if flags & 1:
        struct.pack_into("<3I", h, 32, num_sectors // (255 * 63), 255, 63)
    else:
        h[32:32 + len(parent)] = parent
    struct.pack_into("<I", h, 1648, unclean)
    body = bytearray(h) + b"".join(struct.pack("<I", e) for e in gd)
    body += bytes(-len(body) % 512)
    for sector, data in grains:
        body += bytes(max(0, sector * 512 - len(body)))
        body[sector * 512:sector * 512 + len(data)] = data
    body += bytes(max(0, free * 512 - len(body)))
    return bytes(body)
seeds = {
    # ESX-style lazy tables: GD entry 0, nothing allocated.
    "lazy": cowd(4096, 1, [0], 5),
    # One preallocated GT at sector 5 with one 8-sector grain at 40.
    "one-grain": cowd(8192, 8, [5], 48,
                      grains=[(5, struct.pack("<I", 40)), (40, b"\xab" * 4096)]),
    # Legacy child header naming its parent, left unclean.
    "child": cowd(4096, 1, [0], 5, flags=2, parent=b"parent.vmdk", unclean=1),
    # Header alone (GD past EOF).
    "header-only": cowd(4096, 1, [5], 37)[:2048],
}
for name, data in seeds.items():
    open(f"{out}/{name}", "wb").write(data)
EOF

if command -v qemu-img >/dev/null; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    (
        cd "$tmp"
        qemu-img create -q -f vmdk s.vmdk 1M
        qemu-io -f vmdk -c "write -P 0x11 0 4k" s.vmdk >/dev/null
        qemu-img create -q -f vmdk -o subformat=streamOptimized so-empty.vmdk 1M
        qemu-img convert -O vmdk -o subformat=streamOptimized s.vmdk so.vmdk
        qemu-img create -q -f vmdk -o subformat=monolithicFlat f.vmdk 1M
        qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentSparse t.vmdk 1M
    )
    cp "$tmp/s.vmdk" "$tmp/so.vmdk" "$tmp/so-empty.vmdk" "$corpus/sparse_header/"
    cp "$tmp/f.vmdk" "$corpus/descriptor/flat.vmdk"
    cp "$tmp/t.vmdk" "$corpus/descriptor/split.vmdk"
    head -c 65536 "$tmp/s.vmdk" >"$corpus/descriptor/embedded.vmdk"
else
    echo "SKIP: qemu-img not found, no sparse or qemu descriptor seeds" >&2
fi
cat >"$corpus/descriptor/vmfs-sparse-child.vmdk" <<'EOF'
# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=bbbbbbbb
parentCID=aaaaaaaa
isNativeSnapshot="no"
createType="vmfsSparse"
parentFileNameHint="p.vmdk"
# Extent description
RW 16384 VMFSSPARSE "c-delta.vmdk"
RW 100 ZERO
RDONLY 64 FLAT "x-flat.vmdk" 8

# The Disk Data Base
#DDB

ddb.longContentID = "0123456789abcdef0123456789abcdef"
ddb.adapterType = "lsilogic"
EOF

python3 - "$here/../crates/vmx/tests/it/samples.rs" "$corpus/vmx_dict" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
for name, body in re.findall(r'pub const (\w+): &str = r#"(.*?)"#;', text, re.S):
    open(f"{sys.argv[2]}/{name.lower()}", "w").write(body)
EOF
cat >"$corpus/vmx_dict/catalog" <<'EOF'
version= 1
state= poweredOn
display name= "vm37"
uuid= "564d78a1-8c1c-59b4-fa02-be14138797be"
config.vmx= "[datastore1] vm37/vm37.vmx"
timestamp= 1700000000
quiesced= "yes"
disk.scsi0:0.diskname= "[datastore1] vm37/vm37.vmdk"
disk.scsi0:0.filename= "scsi0-0-0-vm37.vmdk"
disk.scsi0:0.format= "thin"
disk.scsi0:0.capacity= 8589934592
disk.scsi0:1.backedup= "no"
disk.scsi0:1.reason= "physical compatibility RDM"
file.0.name= "vm37.vmx"
file.0.size= 2841
file.0.sha256= "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
EOF
ls -l "$corpus"/*

# Issue 10 targets.
mkdir -p "$corpus"/{catalog,stream_scan,descriptor_files,known_hosts,ssh_config,dest_url,agent_json,qmp_json}
cat > "$corpus/catalog/one" <<'CAT'
version= 1
state= poweredOff
display name= "vm37"
uuid= "564d78a1-8c1c-59b4-fa02-be14138797be"
config.vmx= "[datastore1] vm37/vm37.vmx"
disk.scsi0:0.diskname= "[datastore1] vm37/vm37.vmdk"
disk.scsi0:0.filename= "scsi0-0-0-vm37.vmdk"
disk.scsi0:0.format= "thin"
disk.scsi0:0.capacity= 1048576
disk.scsi0:1.backedup= "no"
disk.scsi0:1.reason= "physical compatibility RDM"
file.0.name= "vm37.vmx"
file.0.size= 12
file.0.sha256= "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
CAT
printf '[127.0.0.1]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ\n@revoked * ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X\n|1|BwcHBwcHBwcHBwcHBwcHBwcHBwc=|aGFzaGhhc2hoYXNoaGFzaGhhc2g= ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ\n*.lan,!bad.lan ecdsa-sha2-nistp256 AAAA\n' > "$corpus/known_hosts/one"
printf 'Include conf.d/*\nHost nas backup-*\n  HostName 10.0.0.9\n  Port=2222\n  User "backup user"\n  IdentityFile ~/.ssh/id_%%r@%%h\nMatch host x\n  User y\nHost *\n  Port 22\n' > "$corpus/ssh_config/one"
for u in "scp://backup@nas:/b/vm37" "scp://nas:2222:/b" "sftp://u@[::1]:22/a/b" "file:///b/vm" "/b/vm37" "[datastore1] vm/vm.vmx"; do
  printf '%s' "$u" > "$corpus/dest_url/$(printf '%s' "$u" | sha1sum | cut -c1-8)"
done
printf '\xff{"return": 1}\n{"return": [{"name":"eth0","ip-addresses":[{"ip-address":"10.0.0.5","ip-address-type":"ipv4"}]}]}\n{"error": {"class": "GenericError", "desc": "x"}}\n' > "$corpus/agent_json/one"
printf '{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}}, "capabilities": []}}\n{"return": {}, "id": 1}\n{"event": "STOP", "data": {}}\n{"return": {"status": "running"}, "id": 2}\n' > "$corpus/qmp_json/one"
if command -v qemu-img >/dev/null; then
  t="$(mktemp -d)"
  head -c 1048576 /dev/urandom > "$t/r.raw"
  qemu-img convert -O vmdk -o subformat=streamOptimized "$t/r.raw" "$t/s.vmdk"
  tail -c +513 "$t/s.vmdk" > "$corpus/stream_scan/qemu"
  qemu-img convert -O vmdk -o subformat=twoGbMaxExtentSparse "$t/r.raw" "$t/t.vmdk"
  { cat "$t/t.vmdk" | sed 's/t-s001.vmdk/e0.vmdk/'; printf '\0\0\0\0'; cat "$t/t-s001.vmdk"; } > "$corpus/descriptor_files/split"
  rm -rf "$t"
fi
printf '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\nRW 8 FLAT "e0.vmdk" 0\nRW 8 FLAT "e1.vmdk" 2\n\0\0\0\0AAAAAAAA\0\0\0\0BBBBBBBBBBBB' > "$corpus/descriptor_files/flat2"
mkdir -p "$corpus/repo_object"
printf '\x04{"format":"vcb-repository","version":1,"id":"0011","created":0,"encryption":"aes-256-gcm","chunk_size":4194304,"compression":"zstd","zstd_level":1,"mac":"ab"}' > "$corpus/repo_object/config"
printf '\x05vcb paper key v1\nrepository r\n0000000000000000 0000000000000000 0000000000000000 0000000000000000\n0000000000000000 0000000000000000 0000000000000000 0000000000000000\nchecksum f5a5fd42\n' > "$corpus/repo_object/paper"
printf '\x01vcbindex\x01\x00\x00\x00\x00\x00\x01\x00\x00\x00\x03\x00\x00\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x00\x01\x02AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' > "$corpus/repo_object/index"
printf '\x02{"version":1,"id":"0123456789abcdef","group":"00","vm":{"name":"vm","uuid":null},"time":1,"written_ns":2,"hostname":"h","quiesced":true,"power_state":"poweredOn","catalog":"x","files":[{"name":"vm.vmx","size":1,"sha256":"00","chunks":["ab"]}],"disks":[{"node":"scsi0:0","name":"d.vmdk","capacity":1,"adapter":"lsilogic","index":"cd","data_bytes":0}]}' > "$corpus/repo_object/point"
printf '\x03{"version":1,"id":"00","created":0,"user":"u","hostname":"h","kdf":"argon2id","kdf_params":{"memory_kib":65536,"iterations":3,"parallelism":1},"salt":"00","cipher":"aes-256-gcm","nonce":"00","wrapped":"00"}' > "$corpus/repo_object/key"
printf '\x00vcbO\x01\x01\x00\x01(\xb5/\xfd' > "$corpus/repo_object/envelope"
mkdir -p "$corpus/ctk_file" "$corpus/nbd_server_bytes"
python3 - "$corpus" <<'PY'
import json, struct, sys, zlib
corpus = sys.argv[1]
# A change-tracking file: 1 MiB disk in 64 KiB blocks, blocks 1 and 9 written.
gens = [0] * 16
gens[1], gens[9] = 2, 3
header = json.dumps({"version": 1, "epoch": "6f1c0e52-8d1b-4a4e-9a53-0c7d2b0e9f11", "sequence": 4,
                     "capacity": 1 << 20, "block_size": 65536, "leaf": "vm.vmdk", "cid": "3c1f0a9d",
                     "state": "live", "session": "qemu-1"}).encode()
body = zlib.compress(b"".join(struct.pack("<I", g) for g in gens))
data = b"VCBCTK\r\n" + struct.pack("<I", len(header)) + header + struct.pack("<Q", len(body)) + body
data += struct.pack("<I", zlib.crc32(data) & 0xffffffff)
open(f"{corpus}/ctk_file/live", "wb").write(data)
# What QEMU's NBD server answers to the client: greeting, option replies, one block status.
def rep(opt, typ, payload=b""):
    return struct.pack(">QIII", 0x0003e889045565a9, opt, typ, len(payload)) + payload
ctx = b"qemu:dirty-bitmap:vcb-ctk-1"
s = struct.pack(">QQH", 0x4e42444d41474943, 0x49484156454F5054, 3)
s += rep(8, 1)
s += rep(10, 4, struct.pack(">I", 1) + ctx) + rep(10, 1)
s += rep(7, 3, struct.pack(">HQH", 0, 1 << 20, 1)) + rep(7, 1)
desc = struct.pack(">III", 1, 65536, 0) + struct.pack(">II", 65536, 1) + struct.pack(">II", (1 << 20) - 131072, 0)
s += struct.pack(">IHHQI", 0x668e33ef, 1, 5, 1, len(desc)) + desc
open(f"{corpus}/nbd_server_bytes/qemu", "wb").write(s)
PY

# Guest file systems (issue 13): small images made by Debian's tools; XFS and NTFS cannot
# be made this small, so their seeds are the first 256 KiB of real images (superblock,
# first inodes, root directory). Run these targets with MAX_LEN=262144.
seed_tmp="$(mktemp -d)"
mkdir -p "$seed_tmp/t/d" "$corpus"/guest_{ext4,xfs,fat,ntfs,volumes} "$corpus/lvm_text"
echo hi > "$seed_tmp/t/a"; head -c 3000 /dev/urandom > "$seed_tmp/t/d/b"; ln -s a "$seed_tmp/t/l"
( cd "$seed_tmp"
  truncate -s 256K e.img && mkfs.ext4 -q -F -b 1024 -N 16 -d t e.img && cp e.img "$corpus/guest_ext4/ext4"
  truncate -s 300M x.img && mkfs.xfs -q -f x.img && head -c 262144 x.img > "$corpus/guest_xfs/xfs-head"
  mkfs.vfat -C f.img 200 >/dev/null && MTOOLS_SKIP_CHECK=1 mcopy -s -i f.img t/a t/d ::/ && cp f.img "$corpus/guest_fat/fat12"
  truncate -s 2M n.img && mkntfs -F -Q -q n.img 2>/dev/null && head -c 262144 n.img > "$corpus/guest_ntfs/ntfs-head"
  truncate -s 256K p.img && printf 'label: dos\n,100K,83\n,,5\n,50K,83\n' | sfdisk -q p.img >/dev/null && cp p.img "$corpus/guest_volumes/mbr"
  printf 'vg {\n id = "a"\n seqno = 2\n extent_size = 2048\n physical_volumes { pv0 { id = "b" pe_start = 2048 pe_count = 10 } }\n logical_volumes { lv { segment1 { start_extent = 0 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 0] } } }\n}\n' > "$corpus/lvm_text/vg" )
rm -rf "$seed_tmp"
