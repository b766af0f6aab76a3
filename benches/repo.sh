#!/usr/bin/env bash
# Repository benchmark (issue 11): a VM with a 4 GiB thin disk holding 1 GiB of random
# and 1 GiB of compressible (log-like text) data, backed up into local repositories by
# vcb (vcbMounter -r repo:), restic and borg (the raw disk file), encryption on for all
# three: first backup, unchanged second backup, backup after 1% of the disk's 1 MiB
# blocks changed, full restore; repository size and peak RSS. Then vcb and restic
# against a SeaweedFS cluster (three volume servers) on 127.0.0.1. Prints a table and
# the ratios restic/vcb and borg/vcb (time: > 1 means vcb is faster).
#
#   benches/repo.sh          (needs ~12 GiB free in $BENCH_DIR or /var/tmp; root installs
#                             restic and borgbackup when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/seaweed.sh
work=${BENCH_DIR:-/var/tmp}/vcb-bench-repo
target=${CARGO_TARGET_DIR:-$PWD/target}
if ! command -v restic >/dev/null || ! command -v borg >/dev/null; then
  [ "$(id -u)" -eq 0 ] || { echo "install restic and borgbackup" >&2; exit 2; }
  apt-get install -y -qq restic borgbackup >/dev/null
fi
for tool in /usr/bin/time python3 bc; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done
rm -rf "$work" && mkdir -p "$work"
cleanup() { stop_seaweed; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --quiet --bin vcb --bin vcbMounter --bin vcbRestore
vcb=$target/release/vcb
mounter=$target/release/vcbMounter
vrestore=$target/release/vcbRestore
echo "restic: $(restic version | head -n1); borg: $(borg --version)"
echo "cpu: $(nproc) cores, load at start $(cut -d' ' -f1-3 /proc/loadavg)"

export RESTIC_PASSWORD=bench-passphrase BORG_PASSPHRASE=bench-passphrase
export VCB_PASSWORD_FILE=$work/pass BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
printf 'bench-passphrase' >"$work/pass"
root=$work/host
"$vcb" host init --root "$root" --name bench >/dev/null
"$vcb" vm create bench --root "$root" --disk 4G --format thin >/dev/null
flat=$root/volumes/datastore1/bench/bench-flat.vmdk

python3 - "$flat" <<'PY'
import os, random, sys
rnd = random.Random(2026)
with open(sys.argv[1], "r+b") as f:
    f.seek(0)                         # 1 GiB of random data
    for _ in range(1024):
        f.write(os.urandom(1 << 20))
    f.seek(2 << 30)                   # 1 GiB of log-like text (compresses ~4x)
    i, written = 0, 0
    while written < (1 << 30):
        lines = "".join(
            f"2026-12-06T03:{(i + k) % 60:02d}:{(i * 7 + k) % 60:02d} host{(i + k) % 97} "
            f"vcb[{1000 + (i + k) % 4096}]: event {(i + k) * 2654435761 % 1000003} "
            f"state={'ok' if (i + k) % 13 else 'retry'} bytes={(i * 31 + k) % 65536}\n"
            for k in range(4096))
        b = lines.encode()[: (1 << 30) - written]
        f.write(b)
        written += len(b)
        i += 4096
PY
sync

# measure NAME CMD... : runs CMD, records wall seconds and peak RSS (KiB) as NAME. Every
# command is timed until its data is durable (`sync` after it): vcb fsyncs what it stores
# and restores (its restore swaps files in under a journal), restic and borg leave part of
# it in the page cache.
declare -A secs rss
measure() {
  local name=$1; shift
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  local start end
  start=$(date +%s.%N)
  /usr/bin/time -f "%e %M" -o "$work/time" "$@" >"$work/out" 2>"$work/err" || { cat "$work/out" "$work/err" >&2; exit 1; }
  sync
  end=$(date +%s.%N)
  read -r _ rss["$name"] <"$work/time"
  secs[$name]=$(echo "$end - $start" | bc -l | xargs printf "%.2f")
  echo "  $name: ${secs[$name]} s, peak RSS $((${rss[$name]} / 1024)) MiB"
}
change_1pct() {  # overwrite 41 random 1 MiB blocks of the data (1% of the 4 GiB disk)
  python3 - "$flat" "$1" <<'PY'
import os, random, sys
rnd = random.Random(int(sys.argv[2]))
with open(sys.argv[1], "r+b") as f:
    for _ in range(41):
        f.seek(rnd.choice([rnd.randrange(0, 1024), rnd.randrange(2048, 3072)]) << 20)
        f.write(os.urandom(1 << 20))
PY
}

# restic restores holes as holes only from 0.16 on (--sparse).
restic_sparse=()
restic restore --help 2>&1 | grep -q -- --sparse && restic_sparse=(--sparse)
cp --sparse=always "$flat" "$work/original"
vr=$work/vcb-repo rr=$work/restic-repo br=$work/borg-repo
"$vcb" repo init "$vr" >/dev/null
restic init -r "$rr" >/dev/null
borg init -e repokey-blake2 "$br" >/dev/null 2>&1

echo "local repositories:"
measure vcb_first "$mounter" --root "$root" -a name:bench -r "repo:$vr"
measure restic_first restic -r "$rr" backup "$flat"
measure borg_first borg create "$br::b1" "$flat"
measure vcb_second "$mounter" --root "$root" -a name:bench -r "repo:$vr"
measure restic_second restic -r "$rr" backup "$flat"
measure borg_second borg create "$br::b2" "$flat"
change_1pct 1
cp --sparse=always "$flat" "$work/changed"
measure vcb_changed "$mounter" --root "$root" -a name:bench -r "repo:$vr"
measure restic_changed restic -r "$rr" backup "$flat"
measure borg_changed borg create "$br::b3" "$flat"

# Restores of the last backup: vcb in place (the VM's disk replaced), restic and borg into
# folders; each checked against the disk as it was backed up.
measure vcb_restore "$vrestore" --root "$root" -s "repo:$vr#bench" -l overwrite
cmp "$flat" "$work/changed" || { echo "vcb restored other data" >&2; exit 1; }
mkdir -p "$work/rr" "$work/br"
measure restic_restore restic -r "$rr" restore latest --target "$work/rr" "${restic_sparse[@]}"
cmp "$work/rr$flat" "$work/changed" || { echo "restic restored other data" >&2; exit 1; }
measure borg_restore bash -c "cd '$work/br' && borg extract --sparse '$br::b3'"
cmp "$work/br$flat" "$work/changed" || { echo "borg restored other data" >&2; exit 1; }
rm -rf "$work/rr" "$work/br"

size() { du -sb "$1" | cut -f1; }
declare -A bytes=([vcb]=$(size "$vr") [restic]=$(size "$rr") [borg]=$(size "$br"))

ratio() { echo "$1 / $2" | bc -l | xargs printf "%.1f"; }
echo
printf "%-16s %10s %10s %10s %12s %12s\n" step vcb restic borg restic/vcb borg/vcb
for step in first second changed restore; do
  printf "%-16s %9ss %9ss %9ss %11sx %11sx\n" "$step" "${secs[vcb_$step]}" "${secs[restic_$step]}" "${secs[borg_$step]}" \
    "$(ratio "${secs[restic_$step]}" "${secs[vcb_$step]}")" "$(ratio "${secs[borg_$step]}" "${secs[vcb_$step]}")"
done
printf "%-16s %9sM %9sM %9sM %11sx %11sx\n" "repo size" "$((bytes[vcb] >> 20))" "$((bytes[restic] >> 20))" "$((bytes[borg] >> 20))" \
  "$(ratio "${bytes[restic]}" "${bytes[vcb]}")" "$(ratio "${bytes[borg]}" "${bytes[vcb]}")"
peak() { local m=0; for s in first second changed restore; do v=${rss[${1}_$s]}; [ "$v" -gt "$m" ] && m=$v; done; echo $((m / 1024)); }
printf "%-16s %9sM %9sM %9sM\n" "peak RSS" "$(peak vcb)" "$(peak restic)" "$(peak borg)"

echo
echo "SeaweedFS (3 volume servers, replication 010) on 127.0.0.1:"
start_seaweed "$work" bench
"$vcb" repo init s3://bench/vcb >/dev/null
restic init -r "s3:$s3_endpoint/bench/restic" >/dev/null
cp --sparse=always "$work/changed" "$flat"
measure vcb_s3_first "$mounter" --root "$root" -a name:bench -r "repo:s3://bench/vcb"
measure restic_s3_first restic -r "s3:$s3_endpoint/bench/restic" backup "$flat"
measure vcb_s3_restore "$vrestore" --root "$root" -s "repo:s3://bench/vcb#bench" -l overwrite
cmp "$flat" "$work/changed" || { echo "vcb restored other data from S3" >&2; exit 1; }
mkdir -p "$work/rr"
measure restic_s3_restore restic -r "s3:$s3_endpoint/bench/restic" restore latest --target "$work/rr" "${restic_sparse[@]}"
cmp "$work/rr$flat" "$work/changed" || { echo "restic restored other data from S3" >&2; exit 1; }
printf "%-16s %10s %10s %12s\n" step vcb restic restic/vcb
for step in s3_first s3_restore; do
  printf "%-16s %9ss %9ss %11sx\n" "$step" "${secs[vcb_$step]}" "${secs[restic_$step]}" "$(ratio "${secs[restic_$step]}" "${secs[vcb_$step]}")"
done
