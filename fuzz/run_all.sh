#!/usr/bin/env bash
# Runs fuzz targets one after the other for SECS seconds each (default 600) and prints a
# summary line per target from libFuzzer's final stats. Crash inputs land in
# artifacts/<target>/ (git-ignored): each one becomes a regression test.
#   ./run_all.sh [SECS] [TARGET...]
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
secs="${1:-600}"; shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(catalog stream_scan descriptor_files known_hosts ssh_config dest_url agent_json qmp_json repo_object ctk_file nbd_server_bytes nbd_client_requests)
export RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/vcb-fuzz-target}" TMPDIR=/dev/shm
cd "$here"
for t in "${targets[@]}"; do
  log="/tmp/fuzz-$t.log"
  mkdir -p "corpus/$t"
  cargo fuzz run "$t" -- -max_total_time="$secs" -rss_limit_mb=1024 -timeout=10 -max_len="${MAX_LEN:-65536}" >"$log" 2>&1
  rc=$?
  stats="$(grep -E '^(#[0-9]+|Done)' "$log" | tail -n 1)"
  echo "$t: exit $rc: $stats"
done
