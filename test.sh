#!/usr/bin/env bash
# The test command: installs the Debian packages the tests drive (qemu-img, qemu-io, qemu-nbd,
# qemu-storage-daemon, nbdinfo, nbdcopy, fio; ip and tc for the two-host tests; systemd-socket-activate; strace,
# for the order of a command's fsyncs and renames; clang, zlib and binutils for the native build), builds, runs
# every test project (the command-line tests only in part), then the command-line tests in full against the
# native build (publish.sh), and ends with one plain line "N passed, N failed" summed over all runs. Exit status
# 0 only when nothing failed.
set -uo pipefail
cd "$(dirname "$0")"

# clang, zlib1g-dev and binutils: publish.sh's native build links with clang, packaging/build-deb.sh reads the
# executable with objdump. Installed here, in the one apt transaction, so the native pass does not depend on
# a second apt-get run late in the job.
packages=(qemu-utils qemu-system-common libnbd-bin fio nbdkit iproute2 systemd clang zlib1g-dev binutils strace)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq >/dev/null && $sudo apt-get install -y -qq "${missing[@]}" >/dev/null \
    || { echo "could not install ${missing[*]}"; echo "0 passed, 1 failed"; exit 1; }
fi

export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

if ! dotnet build BlockMirror.slnx -c Release -v quiet -nologo; then
  echo "build failed"
  echo "0 passed, 1 failed"
  exit 1
fi

results=.test-results
rm -rf "$results"
mkdir -p "$results"
status=0
# One project at a time, each into its own folder: no report overwrites another, and randomized
# concurrency tests do not fight another project for the cores. A hang fails the run (instead of
# eating CI's time limit); no dump is written.
#
# The command-line tests (BlockMirror.Cli.Tests: each one starts blockmirror, qemu-img or
# qemu-storage-daemon processes) run in full once, against the native executable users install
# (publish.sh, below): the same code compiled ahead of time, where something the JIT build tolerates
# (reflection, a missing runtime option) would fail, and which starts in milliseconds where the JIT build
# spends most of a short command compiling (the full suite took 8.5 minutes under the JIT, 4 native). Under
# the JIT they run only the classes that cover what the JIT build alone does: the demo (README's command
# runs it with dotnet run), serve's warm-up of the switch-over and NBD paths, logging and metrics set-up, the
# command line itself. Should publish.sh fail, the whole suite runs under the JIT instead, so the run still
# says what works.
cli=BlockMirror.Cli.Tests
jit_cli="FullyQualifiedName~DemoCommandTests|FullyQualifiedName~MirrorCommandTests|FullyQualifiedName~ServeMetricsTests|FullyQualifiedName~ServeLoggingTests|FullyQualifiedName~CommandLineTests"
# Tests that need what only the native pass has: the Debian package publish.sh --deb builds.
native_only="FullyQualifiedName!~DebianPackageTests"
run_tests() { # PROJECT RESULTS-NAME [dotnet test options...]
  local project=$1 name=$2; shift 2
  dotnet test "$project" -c Release --no-build -nologo --logger trx --results-directory "$results/$name" \
    --blame-hang-timeout 10m --blame-hang-dump-type none "$@" || status=$?
}
for project in tests/*.Tests/*.csproj; do
  name=$(basename "$project" .csproj)
  filter=()
  [ "$name" = "$cli" ] && filter=(--filter "$jit_cli")
  run_tests "$project" "$name" "${filter[@]}" "$@"
done

publish_failed=0
# The native pass. The same build is packaged (--deb): the pass installs the package, runs its unit's command
# line and purges it (DebianPackageTests, root only). publish.sh's own output (the compiler's, apt's,
# dpkg-deb's) goes to a log: on failure its end is printed here, on standard output, where the CI report
# shows it.
publish_log=$results/publish.log
if built=$(./publish.sh --deb artifacts/blockmirror 2>"$publish_log") && native=$(head -n 1 <<<"$built") && deb=$(tail -n 1 <<<"$built") \
  && [ -x "$native" ] && [ -f "$deb" ]; then
  BLOCKMIRROR_EXE="$native" BLOCKMIRROR_DEB="$deb" run_tests "tests/$cli/$cli.csproj" "$cli.native" "$@"
else
  echo "publish.sh failed: no native blockmirror to test (counted as one failure). It printed:"
  echo "  standard output: ${built:-(nothing)}"
  tail -n 60 "$publish_log" | sed 's/^/  /'
  echo "running the command-line tests under the JIT instead"
  run_tests "tests/$cli/$cli.csproj" "$cli.jit-all" --filter "$native_only" "$@"
  publish_failed=1
fi

passed=0
failed=0
for trx in "$results"/*/*.trx; do
  [ -e "$trx" ] || continue
  counters=$(grep -o '<Counters [^>]*>' "$trx" | head -n 1)
  for field in passed; do
    n=$(sed -n "s/.* $field=\"\([0-9]*\)\".*/\1/p" <<<"$counters"); passed=$((passed + ${n:-0}))
  done
  for field in failed error timeout aborted; do
    n=$(sed -n "s/.* $field=\"\([0-9]*\)\".*/\1/p" <<<"$counters"); failed=$((failed + ${n:-0}))
  done
done

failed=$((failed + publish_failed))

# The differential suite's size: tests that run one input on qemu-storage-daemon 7.2 and on blockmirror serve
# and compare (their class names say Differential, or they live under Iotests/), and of those the ports of
# QEMU's iotests (classes named Iotest*, one per iotest). None of them is in the JIT subset of the
# command-line tests, so no test is counted twice.
count_tests() { # pattern outcome-filter
  find "$results" -name '*.trx' -exec cat {} + | grep -o '<UnitTestResult [^>]*>' | grep -E "testName=\"[^\"]*($1)" | grep -c "$2"
}
if ls "$results"/*/*.trx >/dev/null 2>&1; then
  diff_all=$(count_tests 'Differential|\.Iotests\.' 'outcome=')
  diff_ok=$(count_tests 'Differential|\.Iotests\.' 'outcome="Passed"')
  io_all=$(count_tests '\.Iotests\.Iotest' 'outcome=')
  io_ok=$(count_tests '\.Iotests\.Iotest' 'outcome="Passed"')
  echo "differential tests (same input on qemu-storage-daemon 7.2 and blockmirror): $diff_ok of $diff_all pass; of them ported iotest scenarios (Iotests/Iotest*): $io_ok of $io_all pass (agreeing, or differing only where a test pins it)"
fi

# A test host that crashed may leave no failure in any report; the exit status still tells.
if [ $status -ne 0 ] && [ $failed -eq 0 ]; then
  echo "dotnet test exited with status $status without reporting a failed test (crashed or aborted test host)"
  failed=1
fi

echo "$passed passed, $failed failed"
[ $failed -eq 0 ]
