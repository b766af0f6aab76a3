#!/usr/bin/env bash
# Proxy benchmark (issue 14): a VM with a 4 GiB thin disk holding 1 GiB of random data.
#
# 1. A whole `vcbMounter` backup from a backup proxy (here: the same machine, through
#    `vcb hostd` on 127.0.0.1: HTTPS for the API, NBD for the disk, over TLS with
#    `-m nbdssl` (the default) and plain with `-m nbd`) against the same backup run on
#    the host. Ratio = local seconds / proxy seconds (>= 0.8 is the goal: the proxy
#    keeps at least 80% of the local throughput).
# 2. The agent's NBD server against qemu-nbd serving the same static disk, both with TLS
#    (the agent's self-signed certificate for both), read by `nbdcopy` into /dev/null.
#    Ratio = qemu-nbd seconds / agent seconds (>= 0.9 is the goal).
#
# Each figure is the median of RUNS runs (the machines are shared). Backups are written
# into tmpfs ($BENCH_OUT, default /dev/shm) so that both sides measure the pipeline, not
# the shared disk's fsync latency.
#
#   benches/proxy.sh [RUNS]        (default 5; needs ~6 GiB free in $BENCH_DIR or /var/tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib/common.sh
runs=${1:-5}
work=${BENCH_DIR:-/var/tmp}/vcb-bench-proxy
rm -rf "$work" && mkdir -p "$work"
cleanup() {
  [ -n "${agent_pid:-}" ] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  [ -n "${qnbd_pid:-}" ] && kill "$qnbd_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet --bin vcb --bin vcbMounter
target=${CARGO_TARGET_DIR:-$PWD/target}
vcb=$target/release/vcb
mounter=$target/release/vcbMounter
root=$work/host

"$vcb" host init --root "$root" --name bench >/dev/null
"$vcb" vm create bench --root "$root" --disk 4G --format thin >/dev/null
flat=$root/volumes/datastore1/bench/bench-flat.vmdk
fill_random "$flat"
echo 'bench-password' >"$work/pw"
"$vcb" host user add bench --role backup --password-file "$work/pw" --root "$root" >/dev/null
echo "cpu: $(nproc) cores, load at start $(cut -d' ' -f1-3 /proc/loadavg)"

"$vcb" hostd --root "$root" --listen 127.0.0.1:0 --allow-plain-nbd >"$work/hostd.log" 2>&1 &
agent_pid=$!
for _ in $(seq 100); do grep -q 'listening on' "$work/hostd.log" && break; sleep 0.1; done
url=$(grep -o 'https://[0-9.:]*' "$work/hostd.log")
export HOME=$work/home VCB_CONF=''
mkdir -p "$HOME"
proxy=(-h "$url" -u bench --host-password-file "$work/pw" --accept-new-host-cert)

secs() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>&1; echo "$(date +%s.%N) - $s" | bc; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

out=${BENCH_OUT:-/dev/shm}/vcb-bench-proxy-out
lt=(); st=(); pt=()
for i in $(seq "$runs"); do
  rm -rf "$out" && mkdir "$out" && sync
  lt+=("$(secs "$mounter" --root "$root" -a name:bench -r "$out/local")")
  rm -rf "$out" && mkdir "$out" && sync
  st+=("$(secs "$mounter" "${proxy[@]}" -m nbdssl -a name:bench -r "$out/proxy")")
  rm -rf "$out" && mkdir "$out" && sync
  pt+=("$(secs "$mounter" "${proxy[@]}" -m nbd -a name:bench -r "$out/proxy")")
done
rm -rf "$out"
l=$(printf '%s\n' "${lt[@]}" | median); s=$(printf '%s\n' "${st[@]}" | median)
p=$(printf '%s\n' "${pt[@]}" | median)
row() { printf '%-36s %6.2f s  %5.0f MiB/s of data\n' "$1" "$2" "$(echo "1024 / $2" | bc -l)"; }
row "vcbMounter on the host" "$l"
row "vcbMounter on a proxy, -m nbdssl" "$s"
row "vcbMounter on a proxy, -m nbd" "$p"
printf 'proxy / local throughput: nbdssl %.2fx, nbd %.2fx (goal >= 0.8)\n' \
  "$(echo "$l / $s" | bc -l)" "$(echo "$l / $p" | bc -l)"

# The same with the host's work and the proxy's on separate cores (as on two machines):
# the agent pinned to core 0, each vcbMounter (host or proxy) to core 1.
if [ "$(nproc)" -ge 2 ]; then
  taskset -a -p -c 0 "$agent_pid" >/dev/null
  lt=(); st=()
  for i in $(seq "$runs"); do
    rm -rf "$out" && mkdir "$out" && sync
    lt+=("$(secs taskset -c 1 "$mounter" --root "$root" -a name:bench -r "$out/local")")
    rm -rf "$out" && mkdir "$out" && sync
    st+=("$(secs taskset -c 1 "$mounter" "${proxy[@]}" -m nbdssl -a name:bench -r "$out/proxy")")
  done
  rm -rf "$out"
  taskset -a -p -c "0-$(( $(nproc) - 1 ))" "$agent_pid" >/dev/null
  l=$(printf '%s\n' "${lt[@]}" | median); s=$(printf '%s\n' "${st[@]}" | median)
  row "host, one core" "$l"
  row "proxy -m nbdssl, one core" "$s"
  printf 'proxy / local throughput, one core each: nbdssl %.2fx (goal >= 0.8)\n' "$(echo "$l / $s" | bc -l)"
fi

# 2. NBD servers. The agent exports the static disk of a backup session (held open
# through the API with curl); qemu-nbd serves the same file read-only.
# The agent's self-signed certificate is its own trust anchor for nbdcopy; QEMU wants a
# CA, so qemu-nbd gets a certificate from a throw-away CA (P-256 keys for both).
cert=$root/agent/cert.pem
mkdir -p "$work/tls" "$work/qtls" && cp "$cert" "$work/tls/ca-cert.pem"
(cd "$work/qtls"
 openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=ca \
   -keyout ca-key.pem -out ca-cert.pem 2>/dev/null
 openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
   -keyout server-key.pem -out server.csr 2>/dev/null
 printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >ext.cnf
 openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial -days 2 \
   -extfile ext.cnf -out server-cert.pem 2>/dev/null)
api() { curl -sS --fail-with-body --cacert "$cert" -H "Authorization: Bearer ${token:-}" "$@"; }
token=$(api -H 'Content-Type: application/json' -d '{"user":"bench","password":"bench-password"}' "$url/api/v1/login" | jq -r .token)
session=$(api -H 'Content-Type: application/json' -d '{"vm":"name:bench","no_quiesce":true}' "$url/api/v1/backups")
id=$(echo "$session" | jq -r .id); nbd_port=$(echo "$session" | jq -r .nbd_port)
ticket=$(echo "$session" | jq -r '.exports[0][1]')
qport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
qemu-nbd -r -t -f vmdk -b 127.0.0.1 -p "$qport" -x disk -e 8 \
  --object "tls-creds-x509,id=tls0,dir=$work/qtls,endpoint=server,verify-peer=off" --tls-creds tls0 \
  "$root/volumes/datastore1/bench/bench.vmdk" &
qnbd_pid=$!
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$qport") 2>/dev/null && break; sleep 0.05; done
at=(); qt=()
for i in $(seq "$runs"); do
  at+=("$(secs nbdcopy "nbds://127.0.0.1:$nbd_port/$ticket?tls-certificates=$work/tls" null:)")
  qt+=("$(secs nbdcopy "nbds://127.0.0.1:$qport/disk?tls-certificates=$work/qtls" null:)")
done
# qemu-nbd holds the base disk open: it goes before the snapshot is committed into it.
kill "$qnbd_pid" && wait "$qnbd_pid" 2>/dev/null || true
qnbd_pid=
api -X DELETE "$url/api/v1/backups/$id" >/dev/null
a=$(printf '%s\n' "${at[@]}" | median); q=$(printf '%s\n' "${qt[@]}" | median)
printf '%-34s %8s s\n' "nbdcopy from vcb hostd (TLS)" "$a" "nbdcopy from qemu-nbd (TLS)" "$q"
printf '(%s)\n' "$(qemu-nbd --version | head -n1)"
printf 'agent NBD / qemu-nbd throughput: %.2fx (goal >= 0.9)\n' "$(echo "$q / $a" | bc -l)"
