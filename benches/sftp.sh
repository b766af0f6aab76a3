#!/usr/bin/env bash
# SFTP transport benchmark (issue 5): a SIZE_MIB random file (default 1024 MiB) uploaded
# to and downloaded from a private OpenSSH server on 127.0.0.1, once by OpenSSH's `sftp`
# client and once by vcb-sftp (crates/sftp/examples/sftp_bench.rs), RUNS times each,
# interleaved. Prints the median MB/s (10^6 bytes/s) per tool and the ratio vcb/OpenSSH
# (goal: >= 0.8).
#
# OpenSSH is measured twice for uploads: with its own default cipher preference
# (chacha20-poly1305 first) and with aes128-gcm, the cipher vcb-sftp prefers. vcb-sftp
# fsyncs each uploaded file (fsync@openssh.com); `sftp put -f` does the same and is
# what the ratio is taken against, so both sides make the data durable.
#
#   benches/sftp.sh [RUNS]     (default 3; SIZE_MIB=... to change the file size;
#                               needs 2 x SIZE_MIB free in $BENCH_DIR or /var/tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/common.sh
runs=${1:-3}
size_mib=${SIZE_MIB:-1024}
work=${BENCH_DIR:-/var/tmp}/vcb-bench-sftp
for tool in /usr/sbin/sshd ssh-keygen sftp /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install openssh-server openssh-client time)" >&2; exit 2; }
done
rm -rf "$work" && mkdir -p "$work/remote"
cleanup() {
  stop_sshd
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet -p vcb-sftp --example sftp_bench
bench=$PWD/target/release/examples/sftp_bench

start_sshd "$work"
known_host_line "$work" >"$work/known_hosts"
user=$(id -un)
echo "server: $(/usr/sbin/sshd -V 2>&1 | head -n1 || true); client: $(ssh -V 2>&1)"
echo "cpu: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"

head -c "$((size_mib << 20))" /dev/urandom >"$work/data.bin"
bytes=$((size_mib << 20))
remote=$work/remote/data.bin

# measure CMD... -> "wall_seconds client_cpu_seconds" of CMD (output discarded). The CPU
# time is the client's alone (user + sys), a steadier figure than wall time on a busy box.
measure() {
  /usr/bin/time -f "%e %U %S" -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  awk '{printf "%s %.2f\n", $1, $2 + $3}' "$work/time"
}
ossh=(sftp -q -b - -i "$work/client_key" -o UserKnownHostsFile="$work/known_hosts" -P "$port")
mbs() { echo "$bytes / $1 / 1000000" | bc -l | xargs printf "%.1f"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -A rates cpus
record() {
  local wall cpu
  read -r wall cpu <<<"$2"
  rates[$1]+="$(mbs "$wall") "
  cpus[$1]+="$cpu "
}
for i in $(seq "$runs"); do
  rm -f "$remote"; record up_openssh "$(measure "${ossh[@]}" "$user@127.0.0.1" <<<"put $work/data.bin $remote")"
  rm -f "$remote"; record up_openssh_f "$(measure "${ossh[@]}" "$user@127.0.0.1" <<<"put -f $work/data.bin $remote")"
  rm -f "$remote"; record up_openssh_gcm "$(measure "${ossh[@]}" -c aes128-gcm@openssh.com "$user@127.0.0.1" \
    <<<"put -f $work/data.bin $remote")"
  rm -f "$remote"
  record up_vcb "$(measure "$bench" upload "$work/data.bin" "sftp://$user@127.0.0.1:$port$remote" \
    --key "$work/client_key" --known-hosts "$work/known_hosts")"
  cmp -s "$work/data.bin" "$remote" || { echo "vcb upload differs" >&2; exit 1; }
  rm -f "$work/back.bin"; record down_openssh "$(measure "${ossh[@]}" "$user@127.0.0.1" <<<"get $remote $work/back.bin")"
  rm -f "$work/back.bin"
  record down_vcb "$(measure "$bench" download "$work/back.bin" "sftp://$user@127.0.0.1:$port$remote" \
    --key "$work/client_key" --known-hosts "$work/known_hosts")"
  cmp -s "$work/data.bin" "$work/back.bin" || { echo "vcb download differs" >&2; exit 1; }
  echo "run $i done (load $(cut -d' ' -f1 /proc/loadavg))"
done

med() { tr ' ' '\n' <<<"${rates[$1]}" | grep . | median; }
medcpu() { tr ' ' '\n' <<<"${cpus[$1]}" | grep . | median; }
ratio() { echo "$(med "$1") / $(med "$2")" | bc -l | xargs printf "%.2f"; }
echo
echo "file: $size_mib MiB, runs: $runs (median MB/s and client CPU seconds; all runs' MB/s in brackets)"
printf "%-42s %7s %8s  [%s]\n" "" "MB/s" "cpu s" "runs"
for row in "up_openssh|upload   OpenSSH sftp put (default cipher)" \
           "up_openssh_f|upload   OpenSSH sftp put -f (fsync)" \
           "up_openssh_gcm|upload   OpenSSH sftp put -f, aes128-gcm" \
           "up_vcb|upload   vcb-sftp (fsync)" \
           "down_openssh|download OpenSSH sftp get" \
           "down_vcb|download vcb-sftp"; do
  key=${row%%|*}
  printf "%-42s %7s %8s  [%s]\n" "${row#*|}" "$(med "$key")" "$(medcpu "$key")" "${rates[$key]% }"
done
echo "ratio upload   vcb / OpenSSH put -f:            $(ratio up_vcb up_openssh_f)"
echo "ratio upload   vcb / OpenSSH put (no fsync):    $(ratio up_vcb up_openssh)"
echo "ratio download vcb / OpenSSH get:               $(ratio down_vcb down_openssh)"
