#!/usr/bin/env bash
# Changed-block tracking benchmark (issue 12): a VM with an 8 GiB thin disk holding 2 GiB of
# random data, backed up into a local repository: the full backup, then 1% of the data
# rewritten in scattered 4 KiB..1 MiB runs (through `vcb disk write`, which tracks), an
# incremental with tracking, the same amount rewritten again and an incremental without
# tracking (reads and hashes everything), and restic re-reading the same image as the
# anchor. Prints times, bytes read from the disk and the ratios against the full backup.
#
#   benches/cbt.sh           (needs ~6 GiB free in $BENCH_DIR or /var/tmp; root installs
#                             restic when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${BENCH_DIR:-/var/tmp}/vcb-bench-cbt
target=${CARGO_TARGET_DIR:-$PWD/target}
if ! command -v restic >/dev/null; then
  [ "$(id -u)" -eq 0 ] || { echo "install restic" >&2; exit 2; }
  apt-get install -y -qq restic >/dev/null
fi
for tool in python3 bc; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done
rm -rf "$work" && mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

cargo build --release --quiet --bin vcb
vcb=$target/release/vcb
echo "restic: $(restic version | head -n1); cpu: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
export RESTIC_PASSWORD=bench-passphrase VCB_PASSWORD_FILE=$work/pass
printf 'bench-passphrase' >"$work/pass"
root=$work/host
"$vcb" host init --root "$root" --name bench >/dev/null
"$vcb" vm create bench --root "$root" --disk 8G --format thin >/dev/null
disk=$root/volumes/datastore1/bench/bench.vmdk
flat=$root/volumes/datastore1/bench/bench-flat.vmdk
python3 - "$flat" <<'PY'
import os, sys
with open(sys.argv[1], "r+b") as f:
    for i in range(2048):             # 2 GiB of random data, spread over the 8 GiB
        f.seek((i // 256) * (1 << 30) + (i % 256) * (1 << 20))
        f.write(os.urandom(1 << 20))
PY
"$vcb" vm ctk enable bench --root "$root" >/dev/null
vr=$work/repo rr=$work/restic
"$vcb" repo init "$vr" >/dev/null
restic init -r "$rr" >/dev/null

declare -A secs readb
measure() {  # measure NAME CMD...: wall seconds until the data is durable
  local name=$1; shift
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  local start end
  start=$(date +%s.%N)
  "$@" >"$work/out" 2>"$work/err" || { cat "$work/out" "$work/err" >&2; exit 1; }
  sync
  end=$(date +%s.%N)
  secs[$name]=$(echo "$end - $start" | bc -l | xargs printf "%.2f")
}
last_read() {  # bytes the latest point read from the disks
  "$vcb" repo show "$vr" bench --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["read_bytes"])'
}
change_1pct() {  # 1% of the 2 GiB of data in runs of 4 KiB..1 MiB, through vcb (tracked)
  python3 - "$work/runs" "$1" <<'PY'
import os, random, sys
rnd = random.Random(int(sys.argv[2]))
os.makedirs(sys.argv[1], exist_ok=True)
left, n = (2 << 30) // 100, 0
while left > 0:
    size = min(left, rnd.choice([4096, 16384, 65536, 262144, 1 << 20]))
    i = rnd.randrange(2048)
    off = (i // 256) * (1 << 30) + (i % 256) * (1 << 20) + rnd.randrange(0, (1 << 20) - size + 1) // 512 * 512
    with open(f"{sys.argv[1]}/{n:04d}-{off}", "wb") as f:
        f.write(os.urandom(size))
    left -= size
    n += 1
PY
  local f
  for f in "$work"/runs/*; do
    "$vcb" disk write "$disk" "${f##*-}" "$f"
  done
  echo "  rewrote $(ls "$work/runs" | wc -l) runs, $(du -cb "$work"/runs/* | tail -n1 | cut -f1) bytes"
  rm -rf "$work/runs"
}

measure full "$vcb" backup bench --root "$root" --repo "$vr"
readb[full]=$(last_read)
change_1pct 1
measure tracked "$vcb" backup bench --root "$root" --repo "$vr"
readb[tracked]=$(last_read)
grep -h "changed-block tracking" "$work/out" || true
change_1pct 2
"$vcb" vm ctk disable bench --root "$root" >/dev/null
measure untracked "$vcb" backup bench --root "$root" --repo "$vr"
readb[untracked]=$(last_read)
restic -r "$rr" backup "$flat" >/dev/null
change_1pct 3
measure restic restic -r "$rr" backup "$flat"

pct() { echo "100 * $1 / $2" | bc -l | xargs printf "%.1f"; }
echo
printf "%-28s %9s %14s %10s %10s\n" backup seconds "read (MiB)" "time %" "read %"
for s in full tracked untracked; do
  printf "%-28s %9s %14s %9s%% %9s%%\n" "vcb $s" "${secs[$s]}" "$((readb[$s] >> 20))" \
    "$(pct "${secs[$s]}" "${secs[full]}")" "$(pct "${readb[$s]}" "${readb[full]}")"
done
printf "%-28s %9s %14s %9s%%\n" "restic (re-reads the image)" "${secs[restic]}" "2048+" "$(pct "${secs[restic]}" "${secs[full]}")"
echo "untracked/tracked: $(echo "${secs[untracked]} / ${secs[tracked]}" | bc -l | xargs printf "%.1f")x; restic/tracked: $(echo "${secs[restic]} / ${secs[tracked]}" | bc -l | xargs printf "%.1f")x"
