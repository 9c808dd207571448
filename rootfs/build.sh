#!/usr/bin/env bash
# Builds an ext4 root filesystem image for a sandbox VM whose init is
# envd-init, without root: mkfs.ext4 -d from a staging directory, owners
# fixed afterwards with debugfs. See rootfs/README.md.
#
#   rootfs/build.sh OUT.ext4
#
# Environment:
#   BUNDLE      directory with envd-init and its hard links (default bin/)
#   MODULES     /lib/modules/<release> tree to take kernel modules from
#               (default: none; a kernel with its drivers built in needs none)
#   CACHE       download cache for busybox-static (default .cache/vm)
#   EXTRA_MB    free space in the image (default 64)
#   USER_UID    uid/gid of the user 'user' (default 1000)
set -euo pipefail

out=${1:?usage: rootfs/build.sh OUT.ext4}
case "$out" in /*) ;; *) out=$PWD/$out ;; esac
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
bundle=$(cd "${BUNDLE:-$repo/bin}" && pwd)
modules=${MODULES:-}
cache=${CACHE:-$repo/.cache/vm}
extra_mb=${EXTRA_MB:-64}
uid=${USER_UID:-1000}

die() { echo "rootfs: $*" >&2; exit 1; }
[ -x "$bundle/envd-init" ] || die "no bundle in $bundle (make build)"
command -v mkfs.ext4 >/dev/null || die "mkfs.ext4 missing (apt-get install e2fsprogs)"

# busybox-static gives the coreutils-like tools (one static binary); bash is
# the host's with its libraries, because envd runs commands as bash -l -c.
mkdir -p "$cache"
bb=$cache/busybox
if [ ! -x "$bb" ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download busybox-static >/dev/null) || die "apt-get download busybox-static failed"
  dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/x"
  cp "$tmp/x/bin/busybox" "$bb.new" && mv "$bb.new" "$bb"
  rm -rf "$tmp"
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cd "$stage"
mkdir -p bin sbin usr/bin usr/sbin usr/local/bin usr/local/sbin lib lib64 etc \
  proc sys dev run tmp var/tmp root home/user mnt opt
chmod 1777 tmp var/tmp
chmod 0700 root
ln -s ../run var/run

# The bundle: one inode under four names, so the tree shares its pages.
cp "$bundle/envd-init" usr/local/bin/envd-init
for p in envd-proc envd-fs envd-net; do ln usr/local/bin/envd-init "usr/local/bin/$p"; done

# bash and the libraries it links (the loader path kept as ldd prints it).
cp /bin/bash bin/bash
ldd /bin/bash | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
  mkdir -p ".$(dirname "$lib")"
  cp -L "$lib" ".$lib"
done
ln -s bash bin/sh

cp "$bb" bin/busybox
"$bb" --list-full | while read -r applet; do
  case "$applet" in bin/sh|bin/bash|*/init|*/linuxrc) continue ;; esac
  [ -e "$applet" ] || [ -L "$applet" ] || ln -s /bin/busybox "$applet"
done

cat > etc/passwd <<EOP
root:x:0:0:root:/root:/bin/bash
user:x:$uid:$uid::/home/user:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOP
cat > etc/group <<EOG
root:x:0:
tty:x:5:
user:x:$uid:
nogroup:x:65534:
EOG
printf 'root:*:19000:0:99999:7:::\nuser:*:19000:0:99999:7:::\n' > etc/shadow
chmod 0640 etc/shadow
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > etc/hosts
echo sandbox > etc/hostname
cat > etc/profile <<'EOP'
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
EOP
printf 'export PS1="\\u@\\h:\\w\\$ "\n' > root/.bashrc
cp root/.bashrc home/user/.bashrc

if [ -n "$modules" ]; then
  rel=$(basename "$modules")
  mkdir -p "lib/modules/$rel"
  (cd "$repo" && go run ./rootfs/tool modules "$modules" virtio_mmio virtio_pci virtio_blk virtio_net virtio_rng) |
    while read -r ko; do
      mkdir -p "lib/modules/$rel/$(dirname "$ko")"
      cp "$modules/$ko" "lib/modules/$rel/$ko"
    done
fi

# Size: what the tree holds plus the free space asked for.
used_kb=$(du -sk --apparent-size . | cut -f1)
size_mb=$(( used_kb / 1024 + used_kb / 10240 + extra_mb + 8 ))
mkdir -p "$(dirname "$out")"
rm -f "$out.new"
mkfs.ext4 -q -F -L envd-root -E root_owner=0:0 -d . "$out.new" "${size_mb}M" || die "mkfs.ext4 failed"

# Owners: everything root's, the user's home the user's (a non-root build
# copied its own uid into the image).
{
  find . -mindepth 1 -printf '%P\n' | while read -r p; do
    echo "set_inode_field /$p uid 0"
    echo "set_inode_field /$p gid 0"
  done
  for p in home/user home/user/.bashrc; do
    echo "set_inode_field /$p uid $uid"
    echo "set_inode_field /$p gid $uid"
  done
} > "$stage.debugfs"
debugfs -w -f "$stage.debugfs" "$out.new" >/dev/null 2>"$stage.debugfs.err" || { cat "$stage.debugfs.err" >&2; die "debugfs failed"; }
rm -f "$stage.debugfs" "$stage.debugfs.err"
mv "$out.new" "$out"
bundle_kb=$(du -k --apparent-size "$bundle/envd-init" | cut -f1)
echo "rootfs: $out (${size_mb} MiB image, ${used_kb} KiB of files, bundle ${bundle_kb} KiB)"
