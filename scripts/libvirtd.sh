#!/usr/bin/env bash
# Starts (or stops) a system libvirtd with the QEMU driver on a machine
# without systemd, as the tests with real guests need it. Idempotent.
#   scripts/libvirtd.sh start   install if missing, configure, start, wait for the socket
#   scripts/libvirtd.sh stop    stop libvirtd (running guests keep running)
#   scripts/libvirtd.sh status  exit 0 when it answers
# Needs root. Recipe and reasons: ../shared/PLATFORM.md ("libvirt and QEMU").
set -euo pipefail

sock=/run/libvirt/libvirt-sock
pidfile=/run/libvirtd.pid
packages=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils)

running() {
    [[ -S $sock && -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

install() {
    local missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        echo "libvirtd: installing ${missing[*]}" >&2
        apt-get update -qq
        # The image's backported qemu-utils conflicts with bookworm's QEMU; apt replaces it.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
    # Installing QEMU can remove the backported qemu-utils without putting
    # bookworm's in its place: the image store needs qemu-img.
    if ! command -v qemu-img >/dev/null; then
        echo "libvirtd: installing qemu-utils again" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
    fi
}

configure() {
    mkdir -p /var/log/libvirt /run/libvirt
    # The QEMU driver refuses to start without these accounts.
    getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
    getent group kvm >/dev/null || groupadd -r kvm
    getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
    local conf=/etc/libvirt/qemu.conf
    # Guests run as libvirt-qemu, not root: libvirt's DAC driver hands each
    # QEMU only its own disk and the base behind it. There is no AppArmor or
    # SELinux here, so no MAC driver (docs/operator-guide.md, "Confinement").
    if ! grep -q '^# locus: guests run as libvirt-qemu' "$conf" 2>/dev/null; then
        sed -i '/^# locus: run guests as root/,+3d' "$conf" 2>/dev/null || true
        {
            echo '# locus: guests run as libvirt-qemu (DAC); no MAC driver on this platform'
            echo 'user = "libvirt-qemu"'
            echo 'group = "libvirt-qemu"'
            echo 'security_driver = "none"'
        } >>"$conf"
    fi
    # What udev does elsewhere: KVM for the kvm group, which QEMU's user joins.
    id -nG libvirt-qemu | grep -qw kvm || usermod -a -G kvm libvirt-qemu
    if [[ -c /dev/kvm ]]; then
        chgrp kvm /dev/kvm && chmod 0660 /dev/kvm || echo "libvirtd: cannot open /dev/kvm to QEMU's user; guests use TCG" >&2
    fi
}

start() {
    if running; then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "libvirtd: must run as root to start the system libvirtd" >&2
        exit 1
    fi
    install
    configure
    pgrep -x virtlogd >/dev/null || virtlogd -d
    rm -f "$pidfile"
    libvirtd -d -p "$pidfile"
    for _ in $(seq 100); do
        if running && virsh -c qemu:///system version >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    echo "libvirtd: did not come up; see /var/log/libvirt/" >&2
    exit 1
}

stop() {
    if [[ -f $pidfile ]]; then
        local pid
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$pidfile"
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    status) running ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
