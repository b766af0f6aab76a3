# Shared pieces of the benchmark scripts (sourced, not run).

# start_sshd WORK: a private OpenSSH server on 127.0.0.1 and a free port, with its own
# host key and WORK/client_key authorised. Sets `port` and `sshd_pid`; stop_sshd ends it
# (call it from the script's EXIT trap).
start_sshd() {
  local work=$1
  ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
  ssh-keygen -q -t ed25519 -N '' -f "$work/client_key"
  cp "$work/client_key.pub" "$work/authorized_keys"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$work/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $work/host_key
PidFile $work/sshd.pid
AuthorizedKeysFile $work/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
CONF
  mkdir -p /run/sshd
  /usr/sbin/sshd -D -e -f "$work/sshd_config" 2>"$work/sshd.log" &
  sshd_pid=$!
  disown "$sshd_pid" # no "Killed" notice at cleanup
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.05; done
}

# known_host_line WORK: the known_hosts line of the server start_sshd started.
known_host_line() {
  echo "[127.0.0.1]:$port $(cat "$1/host_key.pub")"
}

# stop_sshd: the listener and the per-connection processes it forked.
stop_sshd() {
  if [ -n "${sshd_pid:-}" ]; then
    pkill -KILL -P "$sshd_pid" 2>/dev/null || true
    kill -KILL "$sshd_pid" 2>/dev/null || true
  fi
}

# fill_random FILE: writes 1 GiB of random data into a 4 GiB FILE (created sparse when
# missing) in 64 KiB..8 MiB runs at 64 KiB-aligned random places, the same every time
# (seeded): data compaction cannot shrink, scattered like a used file system's.
fill_random() {
  python3 - "$1" <<'PY'
import os, random, sys
size, want = 4 << 30, 1 << 30
rnd = random.Random(2026)
mode = "r+b" if os.path.exists(sys.argv[1]) else "wb"
with open(sys.argv[1], mode) as f:
    f.truncate(max(size, os.fstat(f.fileno()).st_size))
    written = 0
    while written < want:
        run = rnd.randrange(64 << 10, 8 << 20) // 4096 * 4096
        off = rnd.randrange(0, size - run) // 65536 * 65536
        f.seek(off)
        f.write(os.urandom(run))
        written += run
PY
}
