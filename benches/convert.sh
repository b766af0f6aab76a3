#!/usr/bin/env bash
# Clone benchmark (issue 2): a 4 GiB monolithicSparse disk holding 1 GiB of random data in
# 64 KiB..8 MiB runs, cloned to 2gbsparse, zeroedthick and thin by `vmkfstools -i` and by
# `qemu-img convert`, side by side. Prints the median of RUNS runs, the ratios vcb/qemu-img
# (<= 1.0 means vcb is at least as fast) and vcb's peak RSS.
#
# vcb makes a finished clone durable (fdatasync before it exits). qemu-img convert's default
# target cache mode flushes nothing, so its time excludes writing the data back to disk;
# `qemu-img convert -t writeback` flushes like vcb. Both are shown: "ratio" against the
# default, "ratio durable" against -t writeback.
#
#   benches/convert.sh [RUNS]        (default 5; needs ~7 GiB free in $BENCH_DIR or /var/tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/common.sh
runs=${1:-5}
work=${BENCH_DIR:-/var/tmp}/vcb-bench-convert
rm -rf "$work" && mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet --bin vmkfstools
vmkfstools=$PWD/target/release/vmkfstools

fill_random "$work/src.raw"
qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse "$work/src.raw" "$work/src.vmdk"
rm -f "$work/src.raw"
echo "source: $(qemu-img info "$work/src.vmdk" | grep -E 'virtual size|disk size' | tr '\n' ' ')"

# time_cmd NAME CMD... -> prints "seconds maxrss_kib"
time_cmd() {
  local out=$work/time.txt
  /usr/bin/time -f "%e %M" -o "$out" "$@" >/dev/null 2>&1
  cat "$out"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

printf "%-12s %8s %8s %10s %7s %14s %12s\n" target "vcb s" "qemu s" "qemu -t wb" ratio "ratio durable" "vcb RSS MiB"
for target in 2gbsparse zeroedthick thin; do
  case $target in
    2gbsparse) qopts="subformat=twoGbMaxExtentSparse" ;;
    zeroedthick) qopts="subformat=monolithicFlat,preallocation=falloc" ;;
    thin) qopts="subformat=monolithicFlat" ;;
  esac
  vt=(); qt=(); wt=(); rss=0
  for i in $(seq "$runs"); do
    rm -rf "$work/out" && mkdir "$work/out" && sync
    read -r s m < <(time_cmd "$vmkfstools" -i "$work/src.vmdk" "$work/out/v.vmdk" -d "$target")
    vt+=("$s"); [ "$m" -gt "$rss" ] && rss=$m
    rm -rf "$work/out" && mkdir "$work/out" && sync
    read -r s _ < <(time_cmd qemu-img convert -O vmdk -o "$qopts" "$work/src.vmdk" "$work/out/q.vmdk")
    qt+=("$s")
    rm -rf "$work/out" && mkdir "$work/out" && sync
    read -r s _ < <(time_cmd qemu-img convert -t writeback -O vmdk -o "$qopts" "$work/src.vmdk" "$work/out/q.vmdk")
    wt+=("$s")
  done
  v=$(printf "%s\n" "${vt[@]}" | median); q=$(printf "%s\n" "${qt[@]}" | median); w=$(printf "%s\n" "${wt[@]}" | median)
  printf "%-12s %8.2f %8.2f %10.2f %7.2f %14.2f %12.1f\n" "$target" "$v" "$q" "$w" \
    "$(echo "$v / $q" | bc -l)" "$(echo "$v / $w" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
done
