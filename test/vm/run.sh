#!/usr/bin/env bash
# make vm-test: boots the envd bundle as PID 1 of a QEMU microvm (TCG, no
# KVM unless VM_KVM=1) and drives it through the forwarded port: the E2B JS
# SDK's process and filesystem conformance suites, PID-1 and cgroup checks, a whole-VM
# snapshot and restore, and a clean poweroff. Everything that needs the
# network (apt, npm) happens here; the VMs and the SDK run in a network
# namespace of this test's own, so its 127.0.0.1:49983 clashes with nothing.
#
# Environment: VM_KVM=1 (use KVM where it works), VM_KEEP=1 (keep out/vm),
# VM_CACHE (download cache, default .cache/vm).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${VM_CACHE:-$repo/.cache/vm}
work=$repo/out/vm
die() { echo "vm-test: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "must run as root (network namespace, bind mounts)"
t0=$(date +%s.%N)

# QEMU from Debian's packages, without the recommends (no GUI, no firmware zoo).
if ! command -v qemu-system-x86_64 >/dev/null || ! command -v qemu-img >/dev/null; then
  echo "vm-test: installing qemu-system-x86 qemu-utils"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 qemu-utils >/dev/null
fi
for t in ip mkfs.ext4 debugfs node; do command -v "$t" >/dev/null || die "$t is missing"; done

# Debian's cloud kernel, unpacked without root: the ABI-numbered package
# the meta package points at today (it moves with security updates).
mkdir -p "$cache"
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
if [ -z "$kpkg" ]; then
  apt-get update -qq
  kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
fi
[ -n "$kpkg" ] || die "cannot resolve linux-image-cloud-amd64"
kdir=$cache/$kpkg
if [ ! -d "$kdir/boot" ]; then
  echo "vm-test: fetching $kpkg"
  tmp=$(mktemp -d "$cache/dl.XXXXXX")
  (cd "$tmp" && apt-get download "$kpkg" 2>/dev/null) || { rm -rf "$tmp"; die "apt-get download $kpkg failed"; }
  dpkg-deb -x "$tmp"/"$kpkg"_*.deb "$tmp/x"
  rm -rf "$kdir" && mv "$tmp/x" "$kdir" && rm -rf "$tmp"
fi
kernel=$(echo "$kdir"/boot/vmlinuz-*)
modules=$(echo "$kdir"/lib/modules/*)
rel=$(basename "$modules")

# The SDK.
if [ ! -d "$repo/conformance/js/node_modules/e2b" ]; then
  (cd "$repo/conformance/js" && npm ci --no-audit --no-fund >/dev/null) || die "npm ci failed"
fi

# Image and initramfs, rebuilt only when the bundle or the build changed.
mkdir -p "$work"
key=$( { sha256sum "$repo/bin/envd-init" "$repo/rootfs/build.sh" "$repo/rootfs/tool/main.go"; echo "$kpkg"; } | sha256sum | cut -c1-16)
image=$cache/rootfs-$key.ext4
initrd=$cache/initramfs-$key.cpio
if [ ! -f "$image" ] || [ ! -f "$initrd" ]; then
  rm -f "$cache"/rootfs-*.ext4 "$cache"/initramfs-*.cpio
  MODULES=$modules CACHE=$cache bash "$repo/rootfs/build.sh" "$image.tmp" | tee "$work/build.txt"
  # The initramfs only has to reach the root disk: envd-init as /init and
  # the virtio block driver's modules. The root's envd-init loads the rest.
  args=("$initrd.tmp" "$repo/bin/envd-init=init")
  for ko in $(cd "$repo" && go run ./rootfs/tool modules "$modules" virtio_mmio virtio_blk); do
    args+=("$modules/$ko=lib/modules/$rel/$ko")
  done
  (cd "$repo" && go run ./rootfs/tool initramfs "${args[@]}")
  mv "$image.tmp" "$image" && mv "$initrd.tmp" "$initrd"
fi
# The SDK-side checks read users from /etc/passwd: the image's, bound over
# the host's inside the test's own mount namespace.
debugfs -R 'cat /etc/passwd' "$image" 2>/dev/null > "$work/passwd"
debugfs -R 'cat /etc/group' "$image" 2>/dev/null > "$work/group"
grep -q '^user:' "$work/passwd" || die "the image has no user 'user'"

ns=envd-vm-$$
cleanup() {
  ip netns del "$ns" 2>/dev/null || true
  [ -n "${VM_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
prep=$(awk "BEGIN{print $(date +%s.%N) - $t0}")
echo "vm-test: prepared in ${prep}s (kernel $kpkg)"

# ip netns exec gives a private mount namespace: the binds stay in it.
set +e
ip netns exec "$ns" env \
  VM_KERNEL="$kernel" VM_INITRD="$initrd" VM_IMAGE="$image" VM_WORK="$work" VM_KVM="${VM_KVM:-}" \
  VM_REPO="$repo" \
  bash -c 'mount --bind "$VM_WORK/passwd" /etc/passwd && mount --bind "$VM_WORK/group" /etc/group && exec node "$VM_REPO/test/vm/vm.mjs"'
rc=$?
set -e
echo "vm-test: whole run $(awk "BEGIN{print $(date +%s.%N) - $t0}")s, status $rc"
exit $rc
