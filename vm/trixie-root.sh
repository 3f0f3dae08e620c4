# Sourced by vm/qemu-client-test and vm/circle-test: a cached Debian trixie
# chroot holding QEMU >= 10.1 (trixie-backports), the first QEMU with a
# vfio-user client (`-device vfio-user-pci`).
#
# QEMU 11 needs trixie's libraries; installing it on the bookworm host would
# drag the host's libc and half the system along. A minbase chroot keeps them
# apart: the host's core libraries stay bookworm's, and only the chroot sees
# trixie's.
#
# The caller sets $root and $cache and defines say/die. Provides:
#   trixie_root_ensure      build the chroot once (reused while it is ready)
#   trixie_root_mount       mount proc, sys and dev into it
#   trixie_root_umount      undo that (safe to call twice; for traps)
#   trixie_root_qemu_version

trixie_root="${cache:?}/trixie-root"
# apt_get and debian_mirror.
# shellcheck source=scripts/deps
source "${root:?}/scripts/deps"
trixie_mounts=()

# Every path under $1 that is a mount point, deepest first.
_trixie_mounts_under() {
    local dir
    dir="$(readlink -f "$1" 2>/dev/null || echo "$1")"
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts | sort -r
}

trixie_root_mount() {
    local r=$trixie_root what
    for what in proc sys dev; do
        if mountpoint -q "$r/$what"; then continue; fi
        case $what in
            proc) mount -t proc proc "$r/proc" ;;
            sys) mount -t sysfs sysfs "$r/sys" ;;
            # A bind of the host's /dev: QEMU needs /dev/null, /dev/urandom and
            # friends; nothing in the chroot creates device nodes.
            dev) mount --bind /dev "$r/dev" ;;
        esac || die "mounting $r/$what failed"
        trixie_mounts+=("$r/$what")
    done
}

trixie_root_umount() {
    local m
    for m in "${trixie_mounts[@]}"; do
        # A lazy unmount as the fallback: a straggler process inside the
        # chroot must not leave the host's /dev bound under target/.
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "could not unmount $m"
    done
    trixie_mounts=()
}

# Removing a directory with the host's /dev bound inside would delete the
# host's device nodes: refuse while anything is mounted under it.
_trixie_safe_rm() {
    local left
    left="$(_trixie_mounts_under "$1")"
    [[ -z $left ]] || die "refusing to remove $1: still mounted: $left"
    rm -rf "$1"
}

trixie_root_qemu_version() {
    chroot "$trixie_root" qemu-system-x86_64 --version 2>/dev/null \
        | sed -n 's/^QEMU emulator version \([0-9][0-9.]*\).*/\1/p'
}

trixie_root_ensure() {
    local r=$trixie_root
    if [[ -e $r/.vfio-io-ready ]]; then
        say "trixie chroot cached: $r (QEMU $(trixie_root_qemu_version))"
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap (host, bookworm)"
        apt_install debootstrap || die "apt-get install debootstrap failed"
    fi
    # The chroot's suites come from the mirror the host is configured with.
    local mirror
    mirror="$(debian_mirror)" || die "cannot tell which Debian mirror this machine uses"
    [[ -e /usr/share/debootstrap/scripts/trixie ]] \
        || die "this debootstrap does not know trixie"
    local log="$cache/trixie-root.log"
    say "building the trixie chroot in $r (debootstrap, a few minutes; log $log)"
    if [[ -e $r ]]; then _trixie_safe_rm "$r"; fi
    mkdir -p "$r"
    timeout 1800 debootstrap --variant=minbase trixie "$r" "$mirror" \
        >"$log" 2>&1 || { tail -20 "$log" >&2; die "debootstrap trixie failed (see $log)"; }
    printf '%s\n' "deb $mirror trixie main" \
        "deb $mirror trixie-backports main" >"$r/etc/apt/sources.list"
    cp /etc/resolv.conf "$r/etc/resolv.conf"
    # No daemon may start inside the chroot during package configuration.
    printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
    chmod +x "$r/usr/sbin/policy-rc.d"
    trixie_root_mount
    # seabios is QEMU's PC firmware: without recommends it must be named.
    if ! { timeout 600 chroot "$r" apt-get update -qq &&
        timeout 1200 chroot "$r" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
            -t trixie-backports qemu-system-x86 seabios; } >>"$log" 2>&1; then
        trixie_root_umount
        tail -20 "$log" >&2
        die "installing qemu-system-x86 from trixie-backports in the chroot failed (see $log)"
    fi
    chroot "$r" apt-get clean >/dev/null 2>&1 || true
    local v
    v="$(trixie_root_qemu_version)"
    trixie_root_umount
    [[ -n $v ]] || die "QEMU does not run in the chroot"
    if [[ "$(printf '%s\n10.1\n' "$v" | sort -V | head -1)" != 10.1 ]]; then
        die "chroot QEMU $v is older than 10.1: no vfio-user-pci"
    fi
    touch "$r/.vfio-io-ready"
    say "trixie chroot ready: QEMU $v"
}
