#!/usr/bin/env bash
# Export benchmark (issue 4): a VM with a 4 GiB thin disk holding 1 GiB of random data in
# 64 KiB..8 MiB runs scattered over the disk. Times a whole `vcbMounter` backup of the VM
# (snapshot, export to twoGbMaxExtentSparse, SHA-256 of every file, snapshot removal,
# catalog) against `qemu-img convert -O vmdk -o subformat=twoGbMaxExtentSparse` of the
# same disk. Prints the median of RUNS runs, the ratio vcb/qemu-img (<= 1.0 means vcb is
# at least as fast) and the peak RSS of both. A backup must be durable before its catalog
# says it is complete, so vcb syncs what it wrote; `qemu-img convert` does not, so the
# table also shows qemu-img followed by `sync` of its output (the like-for-like figure).
#
#   benches/export.sh [RUNS]        (default 5; needs ~4 GiB free in $BENCH_DIR or /var/tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/common.sh
runs=${1:-5}
work=${BENCH_DIR:-/var/tmp}/vcb-bench-export
rm -rf "$work" && mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet --bin vcb --bin vcbMounter
# Where cargo put them (not ./target when CARGO_TARGET_DIR is set).
target=${CARGO_TARGET_DIR:-$PWD/target}
vcb=$target/release/vcb
mounter=$target/release/vcbMounter
root=$work/host

"$vcb" host init --root "$root" --name bench >/dev/null
"$vcb" vm create bench --root "$root" --disk 4G --format thin >/dev/null
disk=$root/volumes/datastore1/bench/bench.vmdk
flat=$root/volumes/datastore1/bench/bench-flat.vmdk

fill_random "$flat"
echo "source: $(qemu-img info "$disk" | grep -E 'virtual size|disk size' | tr '\n' ' ')"
echo "qemu-img: $(qemu-img --version | head -n1)"
echo "cpu: $(nproc) cores, load at start $(cut -d' ' -f1-3 /proc/loadavg)"

# time_cmd CMD... -> prints "seconds maxrss_kib"
time_cmd() {
  local out=$work/time.txt
  /usr/bin/time -f "%e %M" -o "$out" "$@" >/dev/null 2>&1
  cat "$out"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

vt=(); qt=(); st=(); vrss=0; qrss=0
for i in $(seq "$runs"); do
  rm -rf "$work/out" && mkdir "$work/out" && sync
  read -r s m < <(time_cmd "$mounter" --root "$root" -a name:bench -r "$work/out/vcb")
  vt+=("$s"); [ "$m" -gt "$vrss" ] && vrss=$m
  rm -rf "$work/out" && mkdir "$work/out" && sync
  read -r s m < <(time_cmd qemu-img convert -O vmdk -o subformat=twoGbMaxExtentSparse "$disk" "$work/out/q.vmdk")
  qt+=("$s"); [ "$m" -gt "$qrss" ] && qrss=$m
  rm -rf "$work/out" && mkdir "$work/out" && sync
  read -r s _ < <(time_cmd sh -c 'qemu-img convert -O vmdk -o subformat=twoGbMaxExtentSparse "$1" "$2/q.vmdk" && sync "$2"/q*.vmdk "$2"' sh "$disk" "$work/out")
  st+=("$s")
done
v=$(printf "%s\n" "${vt[@]}" | median); q=$(printf "%s\n" "${qt[@]}" | median); qs=$(printf "%s\n" "${st[@]}" | median)
printf "%-26s %8s %8s %7s %13s %8s %12s %12s\n" "export (median of $runs)" "vcb s" "qemu s" ratio "qemu+sync s" ratio "vcb RSS MiB" "qemu RSS MiB"
printf "%-26s %8.2f %8.2f %7.2f %13.2f %8.2f %12.1f %12.1f\n" "4 GiB disk, 1 GiB data" "$v" "$q" "$(echo "$v / $q" | bc -l)" \
  "$qs" "$(echo "$v / $qs" | bc -l)" "$(echo "$vrss / 1024" | bc -l)" "$(echo "$qrss / 1024" | bc -l)"
echo "load at end $(cut -d' ' -f1-3 /proc/loadavg)"
