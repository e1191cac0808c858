#!/usr/bin/env bash
# Builds the blockmirror command as users install it: one native executable, compiled ahead of time
# (.NET Native AOT), into DIR (relative to the current directory; default: the repository's
# artifacts/blockmirror). Prints the executable's absolute path; with --deb, then the path of the Debian
# package built from it (packaging/build-deb.sh: the executable, man pages, bash completion, systemd units),
# DIR/blockmirror_VERSION_amd64.deb.
#
#   ./publish.sh [--deb] [DIR]
#
# Why native: a storage command or daemon should be at full speed from its first request. Run through
# the dotnet host, the JIT compiles and recompiles the hot paths while the first second of work runs
# (a `blockmirror bench` of half a second spent about 40 % of its CPU in the JIT and the runtime), and
# the runtime and JIT add tens of MiB of resident memory. The code is the same as the `dotnet build`
# output's; test.sh runs the command-line tests against both.
#
# Native AOT links with clang (Debian package `clang`, installed here if missing, with zlib1g-dev and the binutils
# that packaging/build-deb.sh reads the executable with; root or sudo).
set -euo pipefail
trap 'echo "publish.sh: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
deb=0
if [ "${1-}" = --deb ]; then
  deb=1
  shift
fi
# DIR as the caller means it (relative to the caller's directory); the default is the repository's artifacts/.
if [ $# -ge 1 ]; then
  case $1 in /*) out=$1 ;; *) out=$PWD/$1 ;; esac
fi
cd "$(dirname "$0")"
out=${out:-$PWD/artifacts/blockmirror}

if ! command -v clang >/dev/null 2>&1 || ! command -v objdump >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  # A failed index refresh (one mirror unreachable) need not stop the install: the install says if it cannot.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq >/dev/null || echo "publish.sh: apt-get update failed; trying the install anyway" >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq clang zlib1g-dev binutils >/dev/null \
    || { echo "publish.sh: could not install clang, zlib1g-dev and binutils (the native build needs them)" >&2; exit 1; }
fi

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
# dotnet publish also writes side files next to the executable: the native debug symbols (blockmirror.dbg)
# and each assembly's .pdb and XML documentation, none of which the executable reads. Publish into a
# scratch directory and install the executable alone, so DIR holds what the README says: one file.
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
dotnet publish src/BlockMirror.Cli -c Release -r linux-x64 -p:PublishAot=true -v quiet -nologo -o "$staging" >&2
mkdir -p "$out"
install -m 755 "$staging/blockmirror" "$out/blockmirror"
echo "$out/blockmirror"
if [ $deb -eq 1 ]; then
  packaging/build-deb.sh "$out/blockmirror" "$out"
fi
