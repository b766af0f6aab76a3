#!/usr/bin/env bash
# Remote export benchmark (issue 5): a VM with a 4 GiB thin disk holding 1 GiB of random
# data (64 KiB..8 MiB runs scattered over the disk, so compaction keeps all of it) is
# backed up by `vcbMounter -r scp://...` to a private OpenSSH server on 127.0.0.1: the
# disk streams to the server while it is exported (no local staging), every file
# hashed, fsynced and renamed into place, the catalog last. Against it: OpenSSH's `sftp`
# (batch mode) uploading the same exported files, made once beforehand by a local
# vcbMounter backup, with `put -f` (fsync, like vcb) and plain `put`.
#
# Prints the median wall time and throughput (MB/s = 10^6 bytes/s of exported files,
# catalog and configuration files included) of RUNS interleaved runs, and the ratio
# vcb/OpenSSH (goal: >= 0.8).
#
#   benches/scp_export.sh [RUNS]   (default 3; needs ~3 GiB free in $BENCH_DIR or /var/tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/common.sh
runs=${1:-3}
work=${BENCH_DIR:-/var/tmp}/vcb-bench-scp-export
target=${CARGO_TARGET_DIR:-$PWD/target}
for tool in /usr/sbin/sshd ssh-keygen sftp /usr/bin/time python3 bc; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install openssh-server openssh-client time python3 bc)" >&2; exit 2; }
done
rm -rf "$work" && mkdir -p "$work/remote" "$work/home/.ssh"
cleanup() {
  stop_sshd
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet --bin vcb --bin vcbMounter
vcb=$target/release/vcb
mounter=$target/release/vcbMounter

start_sshd "$work"
known_host_line "$work" >"$work/home/.ssh/known_hosts"
user=$(id -un)

root=$work/host
"$vcb" host init --root "$root" --name bench >/dev/null
"$vcb" vm create bench --root "$root" --disk 4G --format thin >/dev/null
flat=$root/volumes/datastore1/bench/bench-flat.vmdk
fill_random "$flat"

# The files OpenSSH uploads: a local backup of the same VM.
"$mounter" --root "$root" -a name:bench -r "$work/local" >/dev/null
bytes=$(du -cb "$work/local"/* | tail -n1 | cut -f1)
files=("$work/local"/*)
echo "server: $(/usr/sbin/sshd -V 2>&1 | head -n1 || true); client: $(ssh -V 2>&1)"
echo "cpu: $(nproc) cores, load at start $(cut -d' ' -f1-3 /proc/loadavg)"
echo "exported: ${#files[@]} files, $bytes bytes ($(ls "$work/local" | tr '\n' ' '))"

# measure CMD... -> wall seconds (output discarded; failure aborts the benchmark)
measure() {
  /usr/bin/time -f "%e" -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$work/time"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ossh=(sftp -q -b - -i "$work/client_key" -o UserKnownHostsFile="$work/home/.ssh/known_hosts" -P "$port")
batch() {  # batch PUT_COMMAND DIR -> sftp batch uploading every exported file into DIR
  echo "mkdir $2"
  for f in "${files[@]}"; do echo "$1 $f $2/$(basename "$f")"; done
}

vt=(); ft=(); pt=()
for i in $(seq "$runs"); do
  rm -rf "$work/remote"/* && sync
  vt+=("$(HOME=$work/home measure "$mounter" --root "$root" -a name:bench \
    -r "scp://$user@127.0.0.1:$port:$work/remote/vcb$i" -i "$work/client_key")")
  [ -s "$work/remote/vcb$i/catalog" ] || { echo "vcb wrote no catalog" >&2; exit 1; }
  rm -rf "$work/remote"/* && sync
  ft+=("$(measure "${ossh[@]}" "$user@127.0.0.1" < <(batch "put -f" "$work/remote/f$i"))")
  rm -rf "$work/remote"/* && sync
  pt+=("$(measure "${ossh[@]}" "$user@127.0.0.1" < <(batch "put" "$work/remote/p$i"))")
  echo "run $i: vcb ${vt[-1]} s, sftp put -f ${ft[-1]} s, sftp put ${pt[-1]} s (load $(cut -d' ' -f1 /proc/loadavg))"
done
v=$(printf "%s\n" "${vt[@]}" | median)
f=$(printf "%s\n" "${ft[@]}" | median)
p=$(printf "%s\n" "${pt[@]}" | median)
mbs() { echo "$bytes / $1 / 1000000" | bc -l | xargs printf "%.1f"; }
echo
printf "%-58s %8s %8s %7s\n" "scp:// export, 1 GiB of data (median of $runs)" "s" "MB/s" "ratio"
printf "%-58s %8.2f %8s %7s\n" "vcbMounter -r scp:// (streamed, hashed, fsynced)" "$v" "$(mbs "$v")" "1.00"
printf "%-58s %8.2f %8s %7.2f\n" "OpenSSH sftp put -f of the exported files (fsync)" "$f" "$(mbs "$f")" "$(echo "$f / $v" | bc -l)"
printf "%-58s %8.2f %8s %7.2f\n" "OpenSSH sftp put of the exported files (no fsync)" "$p" "$(mbs "$p")" "$(echo "$p / $v" | bc -l)"
echo "ratio = OpenSSH time / vcb time = vcb throughput / OpenSSH throughput (goal >= 0.8); load at end $(cut -d' ' -f1-3 /proc/loadavg)"
