# Sourced by vm/run-guest-tests and vm/circle-test: host packages, the small
# guest kernel, the guest test binary, the initramfs that runs it, and the
# reading of its console.
#
# The caller sets $root (the source tree), $cache (the cache folder) and
# $jobs (kernel build parallelism), and defines say and die.

# ---------------------------------------------------------------- host packages
# apt_get, apt_update, apt_install, debian_mirror.
# shellcheck source=scripts/deps
source "$root/scripts/deps"

# Newer suites are needed only for QEMU (bookworm-backports) and the kernel
# source (trixie-backports). Both are pinned at 100 so that no later
# `apt-get install` or upgrade pulls host libraries from them. They come from
# the mirror this machine's own suite is configured with.
setup_apt() {
    local src=/etc/apt/sources.list.d/vfio-io-vm.sources
    local pin=/etc/apt/preferences.d/vfio-io-vm
    local want_src want_pin mirror
    mirror="$(debian_mirror)" || die "cannot tell which Debian mirror this machine uses"
    want_src="Types: deb
URIs: $mirror
Suites: bookworm-backports trixie trixie-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"
    want_pin="Package: *
Pin: release n=bookworm-backports
Pin-Priority: 100

Package: *
Pin: release n=trixie
Pin-Priority: 100

Package: *
Pin: release n=trixie-backports
Pin-Priority: 100
"
    local changed=0
    # The pin goes in first: there is never a moment with the suites unpinned.
    if ! printf '%s' "$want_pin" | cmp -s - "$pin"; then
        printf '%s' "$want_pin" >"$pin"; changed=1
    fi
    if ! printf '%s' "$want_src" | cmp -s - "$src"; then
        printf '%s' "$want_src" >"$src"; changed=1
    fi
    local stamp="$cache/apt-updated"
    if [[ $changed == 1 || ! -e $stamp || -n "$(find "$stamp" -mmin +1440 2>/dev/null)" ]]; then
        say "apt-get update"
        apt_update >/dev/null || die "apt-get update failed"
        touch "$stamp"
    fi
}

install_packages() {
    apt_install busybox-static cpio flex bison bc libelf-dev libssl-dev gcc make xz-utils \
        kmod python3 ca-certificates || die "apt-get install of the VM's build tools failed"
}

# The host's own QEMU (run-guest-tests boots the guest with it; circle-test
# uses the chroot's QEMU instead).
install_host_qemu() {
    if ! command -v qemu-system-x86_64 >/dev/null; then
        # Take QEMU from bookworm-backports when it is there (matches the
        # qemu-utils this machine kind carries), else bookworm's own.
        say "installing qemu-system-x86"
        if apt-cache policy qemu-system-x86 | grep -q bookworm-backports; then
            apt_get install -y -qq --no-install-recommends -t bookworm-backports \
                qemu-system-x86 >/dev/null || die "installing qemu-system-x86 failed"
        else
            apt_get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null \
                || die "installing qemu-system-x86 failed"
        fi
    fi
    command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is not available"
}

# ---------------------------------------------------------------- the cache
# One run at a time per cache: two runs building one kernel tree, or writing
# one initramfs and console log, corrupt each other. The lock is held until
# the calling script exits.
lock_cache() {
    exec {cache_lock_fd}>"$cache/lock"
    if ! flock -n "$cache_lock_fd"; then
        say "waiting for another run using $cache (lock $cache/lock)"
        flock -w 7200 "$cache_lock_fd" || die "$cache stayed locked for 2 hours"
    fi
}

# ---------------------------------------------------------------- guest kernel
# Every option must be =y after olddefconfig; a silently dropped dependency
# would give a guest without VFIO, iommufd or DMA-BUF and a confusing failure.
kconfig_fragment() {
    local o
    for o in 64BIT SMP PRINTK EARLY_PRINTK TTY SERIAL_8250 SERIAL_8250_CONSOLE \
        BLK_DEV_INITRD RD_GZIP BINFMT_ELF BINFMT_SCRIPT DEVTMPFS DEVTMPFS_MOUNT PROC_FS \
        SYSFS TMPFS SHMEM MULTIUSER FUTEX EPOLL EVENTFD SIGNALFD TIMERFD POSIX_TIMERS \
        FILE_LOCKING ADVISE_SYSCALLS MEMBARRIER RSEQ UNIX NET HIGH_RES_TIMERS PCI PCI_MSI \
        PCIEPORTBUS ACPI X86_X2APIC X86_IO_APIC IRQ_REMAP IOMMU_SUPPORT INTEL_IOMMU \
        INTEL_IOMMU_DEFAULT_ON VIRTIO_MENU VIRTIO_PCI VIRTIO_IOMMU VFIO VFIO_GROUP \
        VFIO_CONTAINER VFIO_IOMMU_TYPE1 IOMMUFD VFIO_DEVICE_CDEV VFIO_PCI SYNC_FILE \
        SPARSEMEM_VMEMMAP MEMORY_HOTPLUG MEMORY_HOTREMOVE ZONE_DEVICE PCI_P2PDMA NET_9P \
        NET_9P_VIRTIO NETWORK_FILESYSTEMS 9P_FS DEBUG_INFO_NONE KERNEL_GZIP MEMFD_CREATE; do
        echo "CONFIG_$o=y"
    done
    echo "# CONFIG_MODULES is not set"
}
# Options that must come on by themselves as a consequence of the fragment.
derived_options="VFIO_PCI_DMABUF"

fetch_kernel_source() {
    local pkg
    pkg="$(apt-cache search --names-only '^linux-source-[0-9]+\.[0-9]+$' \
        | awk '{print $1}' | sort -V | tail -1)"
    [[ -n $pkg ]] || die "no linux-source package found (is trixie-backports reachable?)"
    local ver="${pkg#linux-source-}"
    if [[ "$(printf '%s\n6.19\n' "$ver" | sort -V | head -1)" != 6.19 ]]; then
        die "$pkg is older than 6.19: no VFIO DMA-BUF export"
    fi
    src_pkg="$pkg"
    # The package's full version names the tree, so a new upload of the same
    # kernel series is fetched and built afresh rather than mixed with the old.
    src_ver="$(apt-cache policy "$pkg" | awk '/Candidate:/{print $2}')"
    src_dir="$cache/linux-$ver-${src_ver//[^A-Za-z0-9.+-]/_}"
    if [[ -e $src_dir/.unpacked ]]; then return; fi
    say "fetching $pkg $src_ver"
    rm -rf "$cache/src-dl" "$cache"/linux-*
    mkdir -p "$cache/src-dl"
    (cd "$cache/src-dl" && apt_get download -qq -o APT::Sandbox::User=root "$pkg" >/dev/null) || die "apt-get download $pkg failed"
    dpkg -x "$cache"/src-dl/"$pkg"_*.deb "$cache/src-dl/x"
    local tarball
    tarball="$(ls "$cache"/src-dl/x/usr/src/linux-source-"$ver".tar.* | head -1)"
    [[ -f $tarball ]] || die "no source tarball in $pkg"
    mkdir -p "$src_dir"
    tar -xf "$tarball" -C "$src_dir" --strip-components=1
    rm -rf "$cache/src-dl"
    touch "$src_dir/.unpacked"
}

build_kernel() {
    fetch_kernel_source
    local frag="$cache/guest.config"
    kconfig_fragment >"$frag"
    local key
    key="$( (cat "$frag"; echo "$src_pkg $src_ver") | sha256sum | cut -c1-16)"
    bzimage="$cache/bzImage-$key"
    if [[ -f $bzimage ]]; then say "kernel cached: $(basename "$bzimage")"; return; fi
    say "building guest kernel from $src_pkg (several minutes)"
    local log="$cache/kernel-build.log"
    (
        cd "$src_dir"
        make -s tinyconfig
        KCONFIG_CONFIG=.config scripts/kconfig/merge_config.sh -m .config "$frag"
        make -s olddefconfig
    ) >"$log" 2>&1 || { tail -30 "$log" >&2; die "kernel configuration failed (see $log)"; }
    local o bad=()
    while read -r line; do
        case $line in
            CONFIG_*=y) o="${line%=y}"; grep -qx "$o=y" "$src_dir/.config" || bad+=("$o") ;;
            "# CONFIG_"*" is not set") o="${line#\# }"; o="${o% is not set}"
                ! grep -q "^$o=" "$src_dir/.config" || bad+=("$o (should be off)") ;;
        esac
    done <"$frag"
    for o in $derived_options; do
        grep -qx "CONFIG_$o=y" "$src_dir/.config" || bad+=("CONFIG_$o")
    done
    ((${#bad[@]} == 0)) || die "kernel options did not stick: ${bad[*]}"
    (cd "$src_dir" && make -j"$jobs" bzImage) >>"$log" 2>&1 \
        || { tail -30 "$log" >&2; die "kernel build failed (see $log)"; }
    rm -f "$cache"/bzImage-*
    cp "$src_dir/arch/x86/boot/bzImage" "$bzimage.tmp" && mv "$bzimage.tmp" "$bzimage"
}

# ---------------------------------------------------------------- test binary
build_tests() {
    say "building the guest test binary"
    local json
    json="$(cd "$root" && cargo test --release --test kernel_guest --no-run --message-format=json 2>"$cache/cargo.log")" \
        || { tail -30 "$cache/cargo.log" >&2; die "cargo build of the guest test failed"; }
    test_bin="$(printf '%s\n' "$json" | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 \
        | grep '/kernel_guest-' | tail -1)"
    [[ -x $test_bin ]] || die "cannot find the kernel_guest test binary"
    # The C side in the guest: the QEMU-style drop-in (c-tests/qemu_style.c),
    # built as a pkg-config user of the release library, and the vfio-io command.
    (cd "$root" && cargo build --release --quiet --lib --bin vfio-io 2>>"$cache/cargo.log") \
        || { tail -30 "$cache/cargo.log" >&2; die "cargo build --release failed"; }
    cli_bin="$root/target/release/vfio-io"
    local cbuild="$cache/c-tests-build"
    rm -rf "$cbuild"
    PKG_CONFIG_PATH="$root/target/release/pkgconfig" meson setup "$cbuild" "$root/c-tests" >"$cache/meson.log" 2>&1 \
        && ninja -C "$cbuild" qemu_style >>"$cache/meson.log" 2>&1 \
        || { tail -30 "$cache/meson.log" >&2; die "building c-tests/qemu_style for the guest failed"; }
    c_test_bin="$cbuild/qemu_style"
}

# ---------------------------------------------------------------- initramfs
build_initramfs() {
    local dir="$cache/initramfs"
    rm -rf "$dir"
    mkdir -p "$dir"/{bin,dev,proc,sys,tmp,etc,lib}
    cp /bin/busybox "$dir/bin/busybox"
    # The kernel opens /dev/console for init before anything is mounted.
    mknod -m 600 "$dir/dev/console" c 5 1
    cp "$test_bin" "$dir/bin/kernel_guest"
    cp "$c_test_bin" "$dir/bin/qemu_style"
    cp "$cli_bin" "$dir/bin/vfio-io"
    # The binaries are dynamic: carry the libraries and loader they name, at
    # the same paths (libvfio_io is found through the build tree's rpath).
    local lib bin
    for bin in "$test_bin" "$c_test_bin" "$cli_bin"; do
        for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
            mkdir -p "$dir$(dirname "$lib")"
            cp -L "$lib" "$dir$lib"
            # A build tree under /tmp would be hidden by the guest's tmpfs
            # there: /lib, on the loader's default path, always works.
            [[ -e $dir/lib/$(basename "$lib") ]] || cp -L "$lib" "$dir/lib/"
        done
    done
    cat >"$dir/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
addr=
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat $d/vendor)" = 0x1234 ] && [ "$(cat $d/device)" = 0x11e8 ]; then
        addr=$(basename $d)
    fi
done
if [ -z "$addr" ]; then
    echo "VFIO-IO-GUEST-ERROR no edu device"
else
    echo vfio-pci > /sys/bus/pci/devices/$addr/driver_override
    echo $addr > /sys/bus/pci/drivers_probe
    echo "VFIO-IO-GUEST edu at $addr, driver $(basename $(readlink /sys/bus/pci/devices/$addr/driver))"
    cdev=$(ls /sys/bus/pci/devices/$addr/vfio-dev 2>/dev/null | head -1)
    for road in container iommufd; do
        if [ $road = container ]; then dev=$addr; else dev=/dev/vfio/devices/$cdev; fi
        echo "VFIO-IO-BEGIN road=$road device=$dev"
        VFIO_IO_TEST_DEVICE=$dev RUST_BACKTRACE=1 /bin/kernel_guest --include-ignored --test-threads=1 --show-output $(cat /etc/test-args) 2>&1
        echo "VFIO-IO-RESULT road=$road status=$?"
        echo "VFIO-IO-C-BEGIN road=$road"
        VFIO_IO_TEST_DEVICE=$dev /bin/qemu_style 2>&1
        echo "VFIO-IO-C-RESULT road=$road status=$?"
        echo "VFIO-IO-INFO-BEGIN road=$road"
        /bin/vfio-io info $dev 2>&1
        echo "VFIO-IO-INFO-END road=$road status=$?"
        echo "VFIO-IO-JSON-BEGIN road=$road"
        /bin/vfio-io info $dev --json 2>&1
        echo "VFIO-IO-JSON-END road=$road status=$?"
    done
fi
# The last line before a clean power-off: a guest that panics also ends QEMU
# with status 0 (panic=-1, -no-reboot), but never prints this.
echo "VFIO-IO-GUEST-DONE"
poweroff -f
EOF
    # Extra test-harness arguments (circle-test passes `--skip NAME` for tests
    # that cannot hold on its path; run-guest-tests passes none).
    printf '%s\n' "${guest_test_args:-}" >"$dir/etc/test-args"
    chmod +x "$dir/init"
    initrd="$cache/initrd.gz"
    (cd "$dir" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
}

# ---------------------------------------------------------------- judging the console
# The console between two sentinel lines (both included).
console_section() {
    sed -n "/^$1/,/^$2/p" "$console"
}

# The tests the guest must run on each road: every test in the binary (the
# guest runs them with --include-ignored), less what $guest_test_args skips.
expected_guest_tests() {
    # shellcheck disable=SC2086 # the arguments are words on purpose
    "$test_bin" --list ${guest_test_args:-} 2>/dev/null | sed -n 's/: test$//p' | sort
}

# Checks `vfio-io info --json` (stdin) for road $1: one JSON object whose
# backend is the road's kernel backend and whose capability bits are edu's
# under Linux >= 6.19. Prints one line saying what it found, or why it failed.
check_info_json() {
    local backend
    if [[ $1 == iommufd ]]; then backend=kernel-iommufd; else backend=kernel-container; fi
    python3 -c "$(cat <<'PY'
import json, sys

backend = sys.argv[1]
try:
    v = json.load(sys.stdin)
except ValueError as e:
    sys.exit(f"not valid JSON: {e}")
problems = []
def want(cond, what):
    if not cond:
        problems.append(what)

if not isinstance(v, dict):
    sys.exit(f"not a JSON object: {type(v).__name__}")
want(v.get("schema") == 2, f"schema {v.get('schema')!r}, expected 2")
want(v.get("backend") == backend, f"backend {v.get('backend')!r}, expected {backend!r}")
dev = v.get("device") or {}
want("PCI" in (dev.get("flags") or []), f"device.flags {dev.get('flags')!r} lack PCI")
caps = v.get("capabilities") or {}
mask = caps.get("device")
bits = {b.get("name"): b for b in caps.get("bits") or [] if isinstance(b, dict)}
want(isinstance(mask, int), f"capabilities.device {mask!r} is not a number")
# edu under vfio-pci on Linux >= 6.19: DMA-BUF export (the probe of feature
# 11), an mmappable BAR0, IOMMU DMA; no migration driver (feature 1).
present = {"DMA_BUF": "feature probe (11)", "REGION_MMAP": "region info (0)", "IOMMU_DMA": "backend"}
for name, source in present.items():
    b = bits.get(name)
    if b is None:
        problems.append(f"no capability bit {name}")
        continue
    want(b.get("device") is True and b.get("backend") is True, f"{name}: device {b.get('device')!r} backend {b.get('backend')!r}")
    want(b.get("source") == source, f"{name}: source {b.get('source')!r}, expected {source!r}")
    want(isinstance(mask, int) and isinstance(b.get("bit"), int) and mask >> b["bit"] & 1 == 1,
         f"{name}: bit {b.get('bit')!r} not set in capabilities.device {mask!r}")
m = bits.get("MIGRATION")
want(m is not None and m.get("device") is False and m.get("source") == "feature probe (1)",
     f"MIGRATION should be absent from edu, refused by its probe: {m!r}")
regions = v.get("regions") or []
bar0 = regions[0] if regions and isinstance(regions[0], dict) else {}
want(bar0.get("name") == "BAR0" and bar0.get("size") == 1 << 20, f"regions[0] is not a 1 MiB BAR0: {bar0!r}")
if problems:
    sys.exit("; ".join(problems))
print(f"backend {v['backend']}, device caps {mask:#x}: " + " ".join(n for n in present) + " present, MIGRATION absent")
PY
)" "$backend"
}

# Judges one road of the console: the Rust tests (every expected test must
# report ok, none may fail or be ignored), the C drop-in, and `vfio-io info`
# in both forms. Adds to $passed and $failed.
judge_road() {
    local road=$1 tests line status name
    tests="$(console_section "VFIO-IO-BEGIN road=$road" "VFIO-IO-RESULT road=$road")"
    echo "== road $road"
    while IFS= read -r line; do
        case $line in
            "test "*" ... ok") echo "  $line"; passed=$((passed + 1)) ;;
            "test "*" ... FAILED") echo "  $line"; failed=$((failed + 1)) ;;
            # An ignored test did not run: a road that skips one has not passed.
            "test "*" ... ignored"*) echo "  $line (did not run)"; failed=$((failed + 1)) ;;
            *" device caps: "*) echo "  $line" ;;
        esac
    done <<<"$tests"
    # Each expected test by name, so that a test that never ran (a crash,
    # a filter, a test the guest's binary lacks) fails the road.
    local ran missing n_expected n_ran
    ran="$(sed -n 's/^test \([^ ]*\) \.\.\. ok$/\1/p' <<<"$tests" | sort -u)"
    missing="$(comm -23 <(printf '%s\n' "$expected_tests") <(printf '%s\n' "$ran"))"
    n_expected="$(grep -c . <<<"$expected_tests" || true)"
    n_ran="$(comm -12 <(printf '%s\n' "$expected_tests") <(printf '%s\n' "$ran") | grep -c . || true)"
    if [[ -n $missing ]]; then
        say "road $road: $n_ran of $n_expected tests passed; no ok from: $(tr '\n' ' ' <<<"$missing")"
        failed=$((failed + 1))
    else
        echo "  road $road: all $n_expected tests of the binary passed"
    fi
    status="$(sed -n "s/^VFIO-IO-RESULT road=$road status=\([0-9]*\).*/\1/p" "$console")"
    if [[ -z $status ]]; then
        say "road $road: no result sentinel"; failed=$((failed + 1))
    elif [[ $status != 0 ]]; then
        say "road $road: test binary exited with $status"
        # Show the failure details the test harness printed.
        sed -n '/^failures:/,/^test result/p' <<<"$tests" >&2
        failed=$((failed + 1))
    fi

    # The C drop-in, through the C ABI on the same device.
    status="$(sed -n "s/^VFIO-IO-C-RESULT road=$road status=\([0-9]*\).*/\1/p" "$console")"
    if [[ $status == 0 ]]; then
        echo "  test c-tests/qemu_style ... ok"; passed=$((passed + 1))
    else
        echo "  test c-tests/qemu_style ... FAILED (status ${status:-missing})"; failed=$((failed + 1))
        console_section "VFIO-IO-C-BEGIN road=$road" "VFIO-IO-C-RESULT road=$road" >&2
    fi

    # vfio-io info: the human form is shown, the JSON form is parsed and checked.
    status="$(sed -n "s/^VFIO-IO-INFO-END road=$road status=\([0-9]*\).*/\1/p" "$console")"
    console_section "VFIO-IO-INFO-BEGIN road=$road" "VFIO-IO-INFO-END road=$road" | sed '1d;$d;s/^/    /'
    if [[ $status == 0 ]]; then
        echo "  test vfio-io info ... ok"; passed=$((passed + 1))
    else
        echo "  test vfio-io info ... FAILED (status ${status:-missing})"; failed=$((failed + 1))
    fi
    status="$(sed -n "s/^VFIO-IO-JSON-END road=$road status=\([0-9]*\).*/\1/p" "$console")"
    local verdict
    if [[ $status != 0 ]]; then
        echo "  test vfio-io info --json ... FAILED (status ${status:-missing})"; failed=$((failed + 1))
    elif verdict="$(console_section "VFIO-IO-JSON-BEGIN road=$road" "VFIO-IO-JSON-END road=$road" \
        | sed '1d;$d' | check_info_json "$road" 2>&1)"; then
        echo "  test vfio-io info --json ... ok ($verdict)"; passed=$((passed + 1))
    else
        echo "  test vfio-io info --json ... FAILED: $verdict"; failed=$((failed + 1))
    fi
}

# Reads $console and $guest_rc and sets $summary; fails unless QEMU exited 0
# after the guest's last sentinel and both roads passed in full.
judge() {
    local passed=0 failed=0 road expected_tests
    grep -o 'VFIO-IO-GUEST.*' "$console" || true
    expected_tests="$(expected_guest_tests)"
    [[ -n $expected_tests ]] || die "the kernel_guest binary lists no tests ($test_bin --list)"
    if [[ $guest_rc != 0 ]]; then
        say "QEMU exited with $guest_rc, expected 0 (the guest's power-off)"; failed=$((failed + 1))
    fi
    if ! grep -qx 'VFIO-IO-GUEST-DONE' "$console"; then
        say "the guest never reached its power-off (no VFIO-IO-GUEST-DONE: a panic or a hang)"
        failed=$((failed + 1))
    fi
    for road in container iommufd; do
        if ! grep -q "^VFIO-IO-BEGIN road=$road" "$console"; then
            say "road $road: never started"; failed=$((failed + 1)); continue
        fi
        judge_road "$road"
    done
    summary="$passed passed, $failed failed"
    ((failed == 0 && passed > 0))
}
