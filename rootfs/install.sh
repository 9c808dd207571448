#!/usr/bin/env bash
# Installs the envd bundle into an existing root filesystem tree, as an
# image build script would: the four names as hard links of one file under
# /usr/local/bin, and the mount points envd-init needs as the VM's init.
#
#   rootfs/install.sh DEST          (make install-rootfs DEST=dir)
#
# BUNDLE overrides the bundle directory (default bin/). To boot with it, the
# kernel's init= (or the initramfs' switch target) is /usr/local/bin/envd-init.
set -euo pipefail
dest=${1:?usage: rootfs/install.sh DEST (a root filesystem directory)}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bundle=${BUNDLE:-$here/../bin}
[ -x "$bundle/envd-init" ] || { echo "install-rootfs: no bundle in $bundle (make build)" >&2; exit 1; }
[ -d "$dest" ] || { echo "install-rootfs: $dest is not a directory" >&2; exit 1; }
mkdir -p "$dest/usr/local/bin"
for d in proc sys dev run tmp; do mkdir -p "$dest/$d"; done
chmod 1777 "$dest/tmp"
# Copy under a temporary name and rename, so a running old bundle keeps its
# inode; then link the plugin names to the new one.
cp "$bundle/envd-init" "$dest/usr/local/bin/.envd-init.new"
mv -f "$dest/usr/local/bin/.envd-init.new" "$dest/usr/local/bin/envd-init"
for p in envd-proc envd-fs envd-net; do
  ln -f "$dest/usr/local/bin/envd-init" "$dest/usr/local/bin/$p"
done
echo "install-rootfs: bundle installed in $dest/usr/local/bin ($(stat -c %h "$dest/usr/local/bin/envd-init") links)"
