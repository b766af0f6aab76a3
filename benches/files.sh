#!/usr/bin/env bash
# File-level access benchmark (issue 13): reading every file of a tree (default 2 GiB; set
# BENCH_MIB) out of ext4, XFS and NTFS images, with `tar -cf - | cat >/dev/null` (GNU tar skips reading when writing to /dev/null) over vcb's FUSE
# mount and with `vcb files get`, against the kernel's loop mount of the same image (ext4,
# XFS) and ntfs-3g (NTFS). Page caches are dropped before every run; each figure is the
# best of three (the machines are shared). `get` writes into tmpfs so that it measures
# reading, like tar. Prints MiB/s and ratios.
#
#   benches/files.sh        (root: loop mounts; needs ~4x BENCH_MIB free in $BENCH_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${BENCH_MIB:-2048}
work=${BENCH_DIR:-/var/tmp}/vcb-bench-files
target=${CARGO_TARGET_DIR:-$PWD/target}
[ "$(id -u)" -eq 0 ] || { echo "run as root (loop mounts, dropping caches)" >&2; exit 2; }
rm -rf "$work" && mkdir -p "$work/tree" "$work/mnt"
cleanup() { umount "$work/mnt" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cargo build --release --quiet --bin vcb
vcb=$target/release/vcb

# The tree: files of 4 KiB .. 64 MiB (log-uniform), 200 per directory, until $mib MiB.
python3 - "$work/tree" "$mib" <<'PY'
import os, random, sys
root, total = sys.argv[1], int(sys.argv[2]) << 20
random.seed(13); done = 0; n = 0
while done < total:
    d = os.path.join(root, f"dir{n // 200:04d}"); os.makedirs(d, exist_ok=True)
    size = min(int(2 ** random.uniform(12, 26)), total - done)
    with open(os.path.join(d, f"file{n:06d}.bin"), "wb") as f: f.write(os.urandom(size))
    done += size; n += 1
print(f"tree: {n} files, {done >> 20} MiB")
PY
img_size=$(( mib * 3 / 2 + 512 ))M
truncate -s "$img_size" "$work/ext4.img" && mkfs.ext4 -q -F -d "$work/tree" "$work/ext4.img"
(cd "$work/tree" && { echo /dev/null; echo 0 0; echo d--755 0 0
  for d in */; do d=${d%/}; echo " $d d--755 0 0"; for f in "$d"/*; do echo "  $(basename "$f") ---644 0 0 $work/tree/$f"; done; echo " \$"; done; echo \$; } > "$work/proto")
truncate -s "$img_size" "$work/xfs.img" && mkfs.xfs -q -f -p "$work/proto" "$work/xfs.img"
truncate -s "$img_size" "$work/ntfs.img" && mkntfs -F -Q -q "$work/ntfs.img" 2>/dev/null
ntfs-3g "$work/ntfs.img" "$work/mnt" && cp -r "$work/tree/." "$work/mnt/" && umount "$work/mnt"

secs() { local s; s=$(date +%s.%N); "$@" >/dev/null; echo "$(date +%s.%N) - $s" | bc; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
rate() { echo "scale=1; $mib / $1" | bc; }
tar_mount() { drop; local t; t=$(secs bash -c "tar -cf - -C $work/mnt . | cat >/dev/null"); umount "$work/mnt"; echo "$t"; }
vcb_mount() {
  "$vcb" files mount "$1" "$work/mnt" 2>/dev/null & local pid=$!
  while [ ! -d "$work/mnt/digits/1" ]; do sleep 0.1; done
  drop; local t; t=$(secs bash -c "tar -cf - -C $work/mnt/digits/1 . | cat >/dev/null"); umount "$work/mnt"; wait $pid; echo "$t"
}
printf '%-6s %-26s %8s %9s\n' fs reader "s" "MiB/s"
best() { local b=""; for _ in 1 2 3; do local t; t=$("$@"); if [ -z "$b" ] || [ "$(echo "$t < $b" | bc)" = 1 ]; then b=$t; fi; done; echo "$b"; }
peer_tar() {
  if [ "$1" = ntfs ]; then ntfs-3g -o ro "$work/$1.img" "$work/mnt"; else mount -o loop,ro "$work/$1.img" "$work/mnt"; fi
  tar_mount
}
vcb_get() { drop; rm -rf "$out"; local t; t=$(secs "$vcb" files get "$work/$1.img" 1/ --to "$out"); rm -rf "$out"; echo "$t"; }
out=/dev/shm/vcb-bench-files-out
for fs in ext4 xfs ntfs; do
  if [ $fs = ntfs ]; then peer=ntfs-3g; else peer=kernel; fi
  tp=$(best peer_tar $fs)
  tv=$(best vcb_mount "$work/$fs.img")
  tg=$(best vcb_get $fs)
  printf '%-6s %-26s %8.2f %9s\n' $fs "$peer (tar over mount)" "$tp" "$(rate "$tp")"
  printf '%-6s %-26s %8.2f %9s  %sx %s\n' $fs "vcb (tar over FUSE mount)" "$tv" "$(rate "$tv")" "$(echo "scale=2; $tp / $tv" | bc)" $peer
  printf '%-6s %-26s %8.2f %9s  %sx %s\n' $fs "vcb files get (to tmpfs)" "$tg" "$(rate "$tg")" "$(echo "scale=2; $tp / $tg" | bc)" $peer
done
