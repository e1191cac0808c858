#!/usr/bin/env bash
# Builds the Debian package of blockmirror from a native executable (publish.sh makes it, and calls this
# with --deb): the executable, man pages and bash completion written by the executable itself from its
# command tree (blockmirror generate-docs), the systemd units, /etc/default/blockmirror. Prints the
# package's path.
#
#   packaging/build-deb.sh EXECUTABLE OUTDIR
set -euo pipefail
trap 'echo "build-deb.sh: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
# ldconfig lives in /sbin, which a non-login PATH may lack.
PATH=$PATH:/usr/sbin:/sbin
exe=$(readlink -f "$1")
outdir=$2
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

[ -x "$exe" ] || { echo "build-deb.sh: $exe is not an executable" >&2; exit 1; }
command -v dpkg-deb >/dev/null || { echo "build-deb.sh: dpkg-deb is missing (Debian package dpkg)" >&2; exit 1; }

# The version the program reports ("blockmirror version 1.0.0 (...)"): the project's, without a commit suffix.
version=$("$exe" --version | sed -n '1s/^blockmirror version \([^ ]*\).*/\1/p')
[[ $version =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || { echo "build-deb.sh: cannot read a Debian version from '$("$exe" --version | head -n 1)'" >&2; exit 1; }

root=$(mktemp -d)
chmod 755 "$root"
trap 'rm -rf "$root"' EXIT
install -D -m 755 "$exe" "$root/usr/bin/blockmirror"
mkdir -p "$root/usr/share/man/man1" "$root/usr/share/bash-completion/completions"
"$exe" generate-docs --man-dir "$root/usr/share/man/man1" --bash-completion "$root/usr/share/bash-completion/completions/blockmirror"
gzip -9n "$root"/usr/share/man/man1/*.1
install -D -m 644 -t "$root/lib/systemd/system" "$here"/systemd/*.service "$here"/systemd/*.socket
install -D -m 644 "$here/debian/blockmirror.default" "$root/etc/default/blockmirror"
install -D -m 644 "$repo/LICENSE" "$root/usr/share/doc/blockmirror/copyright"

# Depends: the package of each shared library the executable links (its NEEDED entries), libc6 at the newest
# glibc symbol version it uses; and libssl3, which .NET loads at run time for TLS (tls-creds-x509).
depends=()
glibc=$(objdump -T "$exe" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n 1)
for lib in $(objdump -p "$exe" | awk '/NEEDED/ { print $2 }'); do
  # awk reads to the end: leaving at the first match could end ldconfig with SIGPIPE, which pipefail turns into
  # a failed build (exit 141; seen once in a fresh-clone CI run).
  path=$(ldconfig -p | awk -v lib="$lib" '$1 == lib && /x86-64/ && !found { print $NF; found = 1 }')
  [ -n "$path" ] || { echo "build-deb.sh: $lib (needed by $exe) is not installed" >&2; exit 1; }
  pkg=$(dpkg -S "$path" 2>/dev/null || dpkg -S "$(readlink -f "$path")" 2>/dev/null || dpkg -S "/usr$path") || { echo "build-deb.sh: no package owns $path" >&2; exit 1; }
  pkg=${pkg%%:*}
  if [ "$pkg" = libc6 ]; then pkg="libc6 (>= $glibc)"; fi
  [[ " ${depends[*]-} " == *" $pkg,"* ]] || depends+=("$pkg,")
done
depends+=("libssl3")

mkdir -p "$root/DEBIAN"
install -m 755 "$here"/debian/postinst "$here"/debian/prerm "$here"/debian/postrm "$root/DEBIAN/"
echo /etc/default/blockmirror > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/control" <<CONTROL
Package: blockmirror
Version: $version
Architecture: amd64
Maintainer: BlockMirror developers <blockmirror@users.noreply.github.com>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: ${depends[*]}
Suggests: qemu-utils
Section: admin
Priority: optional
Description: live disk-image mirroring, qemu-storage-daemon compatible
 BlockMirror copies a virtual disk while a VM keeps writing to it and switches
 the VM over to the copy without losing a write (a mirror job), and commits
 qcow2 overlays into their base while in use. blockmirror serve speaks
 qemu-storage-daemon 7.2's command line, QMP and NBD; blockmirror mirror,
 commit, create, info, map, check, compare and resize work on images as
 qemu-img does. Includes systemd units (Type=notify, socket activation).
CONTROL

mkdir -p "$outdir"
deb="$(cd "$outdir" && pwd)/blockmirror_${version}_amd64.deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >&2
echo "$deb"
