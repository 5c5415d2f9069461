#!/usr/bin/env bash
# A second libvirtd on this machine, standing for another host, so that VMs
# can be live-migrated between two libvirt daemons (and two agents) here.
#   scripts/libvirtd-peer.sh start      start it (and the first one) if needed
#   scripts/libvirtd-peer.sh stop       stop it (its guests keep running)
#   scripts/libvirtd-peer.sh status     exit 0 when it answers
#   scripts/libvirtd-peer.sh exec CMD…  run CMD as on the peer host (its namespaces)
#   scripts/libvirtd-peer.sh env        print the URIs and paths tests use
# Needs root. Recipe and reasons: ../shared/PLATFORM.md ("Live migration
# between two libvirt daemons on one machine").
#
# The peer runs in its own mount namespace: its own copies of /etc/libvirt,
# /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt,
# its own host UUID (libvirt refuses a migration "to the same host"
# otherwise), its own migration ports (QEMU listens on this machine's
# hostname, which must resolve, as it does on loopback here), and its
# own $shared: an agent that runs here with its images under $shared sees
# the peer's files at the same path as the first host's agent sees its
# own, as two hosts configured alike would.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=/var/lib/locus-peer
shared=/srv/locus
ns=$root/ns
sock=$root/run/libvirt/libvirt-sock
pidfile=$root/run/libvirt/libvirtd.pid
host_uuid=4c6f6375-732d-7065-6572-000000000002

running() {
    [[ -S $sock && -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

in_ns() {
    nsenter --mount="$ns/mnt" -- "$@"
}

namespaces() {
    if [[ -f $ns/mnt ]] && nsenter --mount="$ns/mnt" true 2>/dev/null; then
        return 0
    fi
    mkdir -p "$ns" "$root"/{etc,run/libvirt,lib,cache,log,host-run,shared} "$shared"
    # Namespace files are kept on a private mount of their own.
    mountpoint -q "$ns" || { mount --bind "$ns" "$ns" && mount --make-private "$ns"; }
    touch "$ns/mnt"
    # The first host's libvirt socket, where the peer's libvirtd can reach
    # it once /run/libvirt is the peer's own.
    mountpoint -q "$root/host-run" || mount --bind /run/libvirt "$root/host-run"
    unshare --mount="$ns/mnt" --propagation private sh -ec "
        mount --bind $root/etc /etc/libvirt
        mount --bind $root/run/libvirt /run/libvirt
        mount --bind $root/lib /var/lib/libvirt
        mount --bind $root/cache /var/cache/libvirt
        mount --bind $root/log /var/log/libvirt
        mount --bind $root/shared $shared
    "
}

configure() {
    if [[ ! -f $root/etc/qemu.conf ]]; then
        cp -a /etc/libvirt/. "$root/etc/"
        # Not the first host's guests or networks.
        rm -f "$root"/etc/qemu/*.xml "$root"/etc/qemu/autostart/* "$root"/etc/qemu/networks/autostart/*
        cp -a /var/lib/libvirt/. "$root/lib/" 2>/dev/null || true
        rm -rf "$root"/lib/qemu/{save,snapshot,checkpoint,dump}/* 2>/dev/null || true
    fi
    touch "$root/etc/libvirtd.conf"
    sed -i '/^# locus-peer/,$d' "$root/etc/libvirtd.conf" "$root/etc/qemu.conf"
    {
        echo '# locus-peer: another host to libvirt'
        echo "host_uuid = \"$host_uuid\""
    } >>"$root/etc/libvirtd.conf"
    {
        echo '# locus-peer: no virtlogd in this namespace; its own migration ports'
        echo 'stdio_handler = "file"'
        echo 'migration_port_min = 49300'
        echo 'migration_port_max = 49363'
    } >>"$root/etc/qemu.conf"
}

start() {
    if running; then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "libvirtd-peer: must run as root" >&2
        exit 1
    fi
    "$here/libvirtd.sh" start
    namespaces
    configure
    rm -f "$pidfile"
    in_ns libvirtd -d -p /run/libvirt/libvirtd.pid
    for _ in $(seq 100); do
        if running && virsh -c "qemu+unix:///system?socket=$sock" version >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.1
    done
    echo "libvirtd-peer: did not come up; see $root/log/" >&2
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
    exec) shift; exec nsenter --mount="$ns/mnt" -- "$@" ;;
    env)
        echo "LOCUS_PEER_URI=qemu+unix:///system?socket=$sock"
        echo "LOCUS_HOST_URI_FROM_PEER=qemu+unix:///system?socket=$root/host-run/libvirt-sock"
        echo "LOCUS_PEER_NS_MNT=$ns/mnt"
        echo "LOCUS_SHARED_DIR=$shared"
        echo "LOCUS_PEER_ROOT=$root"
        ;;
    *) echo "usage: $0 start|stop|status|exec CMD…|env" >&2; exit 2 ;;
esac
