#!/bin/sh
# /init of the runtime tests' guest. Writes 4 KiB blocks one at a time with O_DIRECT:
# write number `seq` goes to block `seq % N` and holds "run=<boot id> seq=<seq> blk=<b>".
# Progress lines on the console (the serial port), all prefixed "vcb-guest:":
#   start run=R disk=D blocks=N     writer starting
#   run=R seq=S                     writes 0..=S have completed (every vcb.every writes)
#   frozen run=R seq=S              fsfreeze hook: paused after completed write S
#   thawed run=R                    fsfreeze hook: writing again
#   stopped run=R seq=S             power button: last completed write S, powering off
# Kernel command line: vcb.blocks=N (default 256), vcb.every=K (default 16).
export PATH=/bin:/sbin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
exec >/dev/console 2>&1 </dev/null
for m in $(cat /modules.list); do insmod /lib/modules/$m.ko 2>/dev/null; done

N=256
EVERY=16
for a in $(cat /proc/cmdline); do
  case "$a" in
    vcb.blocks=*) N="${a#*=}" ;;
    vcb.every=*) EVERY="${a#*=}" ;;
  esac
done
RUN="$(cut -c1-8 /proc/sys/kernel/random/uuid)"
echo "$RUN" >/run/run-id

DISK=
i=0
while [ -z "$DISK" ] && [ $i -lt 200 ]; do
  for d in /dev/vda /dev/sda /dev/nvme0n1; do
    if [ -b "$d" ]; then DISK="$d"; break; fi
  done
  [ -n "$DISK" ] || { usleep 50000; i=$((i + 1)); }
done
if [ -z "$DISK" ]; then
  echo "vcb-guest: no disk"
  ls /dev /sys/block
  poweroff -f
fi

# The ACPI power button ends the run: stop writing, report, power off.
for e in /sys/class/input/event*; do
  [ "$(cat "$e/device/name" 2>/dev/null)" = "Power Button" ] || continue
  echo "vcb-guest: power button /dev/input/${e##*/}"
  (dd if="/dev/input/${e##*/}" bs=24 count=1 >/dev/null 2>&1 && touch /run/stop) &
done

# The guest agent, when the VM has its port.
for p in /sys/class/virtio-ports/*; do
  [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] || continue
  if [ -x /usr/sbin/qemu-ga ]; then
    qemu-ga -m virtio-serial -p "/dev/${p##*/}" -F/etc/qemu/fsfreeze-hook -t /run &
    echo "vcb-guest: agent started"
  fi
done

echo "vcb-guest: start run=$RUN disk=$DISK blocks=$N"
seq=0
while [ ! -e /run/stop ]; do
  if [ -e /run/freeze ]; then
    echo $((seq - 1)) >/run/frozen-at.tmp
    mv /run/frozen-at.tmp /run/frozen-at
    while [ -e /run/freeze ]; do usleep 5000; done
    rm -f /run/frozen-at
    continue
  fi
  b=$((seq % N))
  if ! printf 'run=%s seq=%d blk=%d\n' "$RUN" $seq $b |
    dd of="$DISK" bs=4096 seek=$b count=1 iflag=fullblock conv=sync,notrunc oflag=direct 2>/dev/null; then
    echo "vcb-guest: write error run=$RUN seq=$seq"
    sleep 1
    continue
  fi
  [ $((seq % EVERY)) -ne 0 ] || echo "vcb-guest: run=$RUN seq=$seq"
  seq=$((seq + 1))
done
echo "vcb-guest: stopped run=$RUN seq=$((seq - 1))"
sync
poweroff -f
while :; do sleep 1; done
