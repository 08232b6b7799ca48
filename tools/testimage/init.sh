#!/bin/sh
# PID 1 of the vmops test guest (busybox sh, no real root filesystem).
#
# Everything it reports goes to /dev/console (ttyS0) as VMOPS-* marker lines,
# which is how the functional tests observe the guest. The contract is
# documented in tools/testimage/build.py; keep the two in sync.
#
# PID 1 must never exit (the kernel panics), so nothing here uses `set -e`
# and the script ends in loops that never return.

export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp /run /var/log /var/run /mnt/config

CMDLINE=" $(cat /proc/cmdline) "

has_arg() {
    case "$CMDLINE" in *" $1 "*) return 0 ;; esac
    return 1
}

# Everything we need is loaded explicitly below; a kernel-initiated modprobe
# would only find no helper and waste time, so disable the usermode helper.
echo > /proc/sys/kernel/modprobe

# /lib/modules/order lists the bundled modules with dependencies first
# (computed at build time from each .ko's depends= field).
load_modules() {
    while read -r mod; do
        insmod "/lib/modules/$mod.ko" || echo "VMOPS-WARN insmod $mod failed"
    done < /lib/modules/order
}

write_helpers() {
    # busybox acpid maps the power button (KEY_POWER press) to the event
    # "button/power PWRF 00000080" and runs <confdir>/PWRF/00000080 directly.
    # Its children's stdout is acpid's log file, so write to the console.
    mkdir -p /etc/acpi/PWRF
    if has_arg vmops.powerbutton=ignore; then
        printf '#!/bin/sh\necho VMOPS-POWERBUTTON-IGNORED > /dev/console\n' \
            > /etc/acpi/PWRF/00000080
    else
        printf '#!/bin/sh\necho VMOPS-POWERBUTTON > /dev/console\nsync\npoweroff -f\n' \
            > /etc/acpi/PWRF/00000080
    fi
    chmod 755 /etc/acpi/PWRF/00000080

    # udhcpc calls this with $interface, $ip, $mask (prefix length), $router.
    cat > /etc/udhcpc.sh <<'EOF'
#!/bin/sh
case "$1" in
    deconfig)
        ip addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        if [ -n "$router" ]; then
            ip route replace default via "${router%% *}" dev "$interface"
        fi
        echo "VMOPS-IP $interface $ip/${mask:-24}" > /dev/console
        ;;
esac
exit 0
EOF
    chmod 755 /etc/udhcpc.sh
}

start_acpid() {
    # acpid opens /dev/input/event0.. once at start; they exist as soon as
    # evdev and button are loaded (devtmpfs creates nodes synchronously).
    acpid -f -c /etc/acpi -l /dev/null &
}

# The ATA/SCSI probe finishes inside insmod, but give late block devices a
# moment: wait (max ~1 s) until the /sys/block listing stops changing.
settle_block() {
    local prev="" cur i=0
    while [ $i -lt 5 ]; do
        cur=$(ls /sys/block)
        [ -n "$prev" ] && [ "$cur" = "$prev" ] && return 0
        prev=$cur
        i=$((i + 1))
        usleep 200000
    done
}

block_devs() {
    local d
    for d in /sys/block/vd* /sys/block/sd* /sys/block/sr*; do
        [ -e "$d" ] && echo "${d##*/}"
    done
}

report_disk() {
    local bytes=$(( $(cat "/sys/block/$1/size") * 512 ))
    # An empty CD-ROM drive reports a made-up capacity; opening it fails.
    case "$1" in sr*) head -c 1 "/dev/$1" > /dev/null 2>&1 || bytes=0 ;; esac
    echo "VMOPS-DISK $1 $bytes"
}

nics() {
    local n
    for n in /sys/class/net/*; do
        [ "${n##*/}" = lo ] || echo "${n##*/}"
    done
}

report_nic() {
    echo "VMOPS-NIC $1 $(cat "/sys/class/net/$1/address")"
}

start_dhcp() {
    ip link set "$1" up
    # -f -q in a background job: retry in rounds until a lease, then exit
    # keeping the address. Its own chatter would clutter the console.
    udhcpc -f -q -i "$1" -s /etc/udhcpc.sh -t 5 -T 1 -A 2 > /dev/null 2>&1 &
}

# LEN bytes at OFFSET of a device, without NULs and trailing blanks.
read_str() {
    dd if="$1" bs=1 skip="$2" count="$3" 2> /dev/null | tr -d '\000' | sed 's/ *$//'
}

# The filesystem label of an iso9660 or FAT device, upper-cased. Read
# directly: busybox findfs misses ISOs smaller than its 68 KiB probe buffer,
# and small config drives are exactly that.
fs_label() {
    local label=""
    if [ "$(read_str "$1" 32769 5)" = CD001 ]; then
        label=$(read_str "$1" 32808 32)
    elif [ "$(read_str "$1" 54 4)" = FAT1 ]; then
        label=$(read_str "$1" 43 11)
    elif [ "$(read_str "$1" 82 5)" = FAT32 ]; then
        label=$(read_str "$1" 71 11)
    fi
    echo "$label" | tr a-z A-Z
}

# Whole disks and partitions alike (a config drive is usually a whole disk).
find_config_drive() {
    local b
    for b in /sys/class/block/vd* /sys/class/block/sd* /sys/class/block/sr*; do
        [ -e "$b" ] || continue
        if [ "$(fs_label "/dev/${b##*/}")" = CONFIG-2 ]; then
            echo "/dev/${b##*/}"
            return 0
        fi
    done
    return 1
}

dump_file() {
    [ -f "/mnt/config/$1" ] || return 0
    echo "VMOPS-FILE-BEGIN $1"
    cat "/mnt/config/$1"
    echo
    echo "VMOPS-FILE-END $1"
}

report_config_drive() {
    local dev f
    dev=$(find_config_drive)
    if [ -z "$dev" ] || ! mount -o ro "$dev" /mnt/config; then
        echo "VMOPS-CONFIGDRIVE-NONE"
        return
    fi
    echo "VMOPS-CONFIGDRIVE-FOUND $dev"
    for f in openstack/latest/meta_data.json openstack/latest/user_data \
            openstack/latest/network_data.json openstack/latest/vendor_data.json \
            ec2/latest/meta-data.json; do
        dump_file "$f"
    done
    if [ -d /mnt/config/openstack/content ]; then
        (cd /mnt/config && find openstack/content -type f | sort) |
            while read -r f; do dump_file "$f"; done
    fi
}

# Like cloud-init with a "#!" user-data part: run it, so tests can make the
# guest act by itself (power off, write to its disks, ...).
run_user_script() {
    local ud=/mnt/config/openstack/latest/user_data
    [ -f "$ud" ] || return 0
    [ "$(head -c 2 "$ud")" = '#!' ] || return 0
    cp "$ud" /tmp/user-script && chmod 755 /tmp/user-script
    echo "VMOPS-USER-SCRIPT-START"
    /tmp/user-script > /dev/console 2>&1 &
}

# Lines printed after boot for block devices and NICs that come and go
# (hotplug): the same VMOPS-DISK / VMOPS-NIC formats, plus -GONE lines.
watch_devices() {
    local d n
    for d in $(block_devs); do
        case " $KNOWN_DISKS " in *" $d "*) ;; *) report_disk "$d" ;; esac
    done
    for d in $KNOWN_DISKS; do
        [ -e "/sys/block/$d" ] || echo "VMOPS-DISK-GONE $d"
    done
    KNOWN_DISKS=" $(block_devs | tr '\n' ' ')"
    for n in $(nics); do
        case " $KNOWN_NICS " in *" $n "*) ;; *) report_nic "$n"; start_dhcp "$n" ;; esac
    done
    for n in $KNOWN_NICS; do
        [ -e "/sys/class/net/$n" ] || echo "VMOPS-NIC-GONE $n"
    done
    KNOWN_NICS=" $(nics | tr '\n' ' ')"
}

# A loop of its own, so that the heartbeat keeps a steady one-second pace.
watch_devices_forever() {
    while :; do
        sleep 1
        watch_devices
    done
}

heartbeat() {
    local beat=0
    while :; do
        beat=$((beat + 1))
        echo "VMOPS-HEARTBEAT $beat"
        sleep 1
    done
}

# What is typed on the serial console (vmops console NAME) runs in a root
# shell, line by line: a loop, not an interactive sh, so no prompt or
# line-editing escapes cut into the marker lines; the tty echoes the typing
# and ^C reaches the command (the tty is the shell's controlling terminal).
# A syntax error, ^C or "exit" ends the shell; the loop starts another.
console_shell() {
    while :; do
        setsid -c sh -c 'while IFS= read -r line; do eval "$line"; done' \
            < /dev/ttyS0 > /dev/ttyS0 2>&1
        sleep 1
    done
}

# Console throughput test: numbered ~100-byte lines, as fast as possible.
flood() {
    awk 'BEGIN {
        pad = sprintf("%80s", ""); gsub(/ /, "x", pad)
        for (n = 1; ; n++) printf "VMOPS-FLOOD %d %s\n", n, pad
    }'
}

load_modules
write_helpers
ip link set lo up
start_acpid
echo "VMOPS-BOOT-COMPLETE"
echo "VMOPS-KERNEL $(uname -r)"
echo "VMOPS-CPUS $(nproc)"
echo "VMOPS-MEMTOTAL $(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo)"

settle_block
KNOWN_DISKS=" $(block_devs | tr '\n' ' ')"
for d in $KNOWN_DISKS; do report_disk "$d"; done
KNOWN_NICS=" $(nics | tr '\n' ' ')"
for n in $KNOWN_NICS; do report_nic "$n"; done

# The config drive dump comes before DHCP and the heartbeat start so that
# no other marker line can land between its FILE-BEGIN/FILE-END lines.
report_config_drive
run_user_script
for n in $KNOWN_NICS; do start_dhcp "$n"; done
watch_devices_forever &
console_shell &

if has_arg vmops.flood=1; then
    flood
else
    heartbeat
fi
while :; do sleep 3600; done
