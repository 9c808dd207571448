#!/usr/bin/env bash
# Runs the E2B JS SDK conformance suite against a freshly started envd bundle.
#
#   conformance/run.sh                      all test files
#   conformance/run.sh process.test.mjs     only some (names under js/test/)
#
# Environment:
#   ENVD_FLAVOR       flavor passed to envd-init (default e2b: these are E2B's SDK tests)
#   ENVD_EXTRA_FLAGS  extra flags for envd-init (default --no-cgroups: the host's cgroup
#                     tree is not ours to reorganise)
#   ENVD_BIN          envd-init to start (default <repo>/bin/envd-init, built with make build)
#   ENVD_FLAGS        replaces all flags (default: --isnotfc --port 49983 --flavor $ENVD_FLAVOR
#                     $ENVD_EXTRA_FLAGS); lets the suite run against another envd build
#   CONFORMANCE_RUNS  runs the suite that many times against the same envd (default 1)
#   CONFORMANCE_PAUSE seconds of idleness before each run and after the last (default 0);
#                     with CONFORMANCE_RUNS, what `make bench-conformance` samples memory across
#
# Must run as root: it creates the test user and envd switches users.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
port=49983
flavor=${ENVD_FLAVOR:-e2b}
extra_flags=${ENVD_EXTRA_FLAGS-"--no-cgroups"}
envd_bin=${ENVD_BIN:-$repo/bin/envd-init}
envd_flags=${ENVD_FLAGS:-"--isnotfc --port $port --flavor $flavor $extra_flags"}

die() { echo "conformance: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (creates user 'user'; envd switches users)"

command -v node >/dev/null || die "node is not installed (need Node >= 20.18.1)"
node -e '
  const [a, b, c] = process.versions.node.split(".").map(Number)
  const ok = a > 20 ? a !== 21 : a === 20 && (b > 18 || (b === 18 && c >= 1))
  if (!ok) { console.error("node " + process.versions.node + " is too old for e2b: need >=20.18.1 <21 || >=22"); process.exit(1) }
' || exit 1

if [ ! -d "$here/js/node_modules/e2b" ]; then
  echo "conformance: installing npm packages (npm ci)"
  (cd "$here/js" && npm ci --no-audit --no-fund) || die "npm ci failed"
fi

if ! id -u user >/dev/null 2>&1; then
  echo "conformance: creating user 'user'"
  useradd -m -s /bin/bash user || die "useradd failed"
fi
user_home=$(getent passwd user | cut -d: -f6)
[ -d "$user_home" ] || { mkdir -p "$user_home" && chown user: "$user_home"; }

if [ ! -x "$envd_bin" ]; then
  [ "$envd_bin" = "$repo/bin/envd-init" ] || die "ENVD_BIN=$envd_bin is not executable"
  echo "conformance: $envd_bin missing, running make build"
  make -C "$repo" build || die "make build failed"
  [ -x "$envd_bin" ] || die "make build did not produce $envd_bin"
fi

# http_status prints the status of GET url, or nothing if there is no answer
# within a second (node is always here; curl may not be).
http_status() {
  node -e '
    fetch(process.argv[1], { signal: AbortSignal.timeout(1000) })
      .then((r) => process.stdout.write(String(r.status)))
      .catch(() => {})
  ' "$1"
}

# Only one envd may own the port; a stale one would answer our tests.
port_busy=
if command -v ss >/dev/null; then
  ss -Hltn "sport = :$port" | grep -q . && port_busy=1
elif node -e '
  const s = require("net").connect('"$port"', "127.0.0.1")
  s.on("connect", () => process.exit(0)).on("error", () => process.exit(1))
'; then
  port_busy=1
fi
if [ -n "$port_busy" ]; then
  command -v ss >/dev/null && ss -Hltnp "sport = :$port" >&2
  die "port $port is already in use; stop the process listening on it first"
fi

log=$(mktemp /tmp/envd-conformance.XXXXXX.log)
envd_pid=
status=1

print_log() {
  echo "----- envd log ($log), last 300 lines -----" >&2
  tail -n 300 "$log" >&2 || true
  echo "----- end of envd log -----" >&2
}

cleanup() {
  if [ -n "$envd_pid" ] && kill -0 "$envd_pid" 2>/dev/null; then
    kill -TERM "$envd_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$envd_pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$envd_pid" 2>/dev/null; then
      echo "conformance: envd-init ignored SIGTERM for 5 s, killing its process group" >&2
      kill -KILL -- "-$envd_pid" 2>/dev/null || true
    fi
    wait "$envd_pid" 2>/dev/null || true
  fi
  # envd-init leads its process group; plugins left in it outlived their
  # supervisor, which is a bug worth seeing.
  if [ -n "$envd_pid" ] && pgrep -g "$envd_pid" >/dev/null 2>&1; then
    echo "conformance: processes of envd's group outlived envd-init, killing them:" >&2
    pgrep -a -g "$envd_pid" >&2 || true
    kill -KILL -- "-$envd_pid" 2>/dev/null || true
  fi
  if [ "$status" -ne 0 ]; then print_log; fi
  rm -f "$log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Job control on: a background job of a non-interactive shell would start with
# SIGINT and SIGQUIT ignored, and envd's user processes would inherit that (a
# PTY's Ctrl-C would do nothing). It also puts envd-init in its own process
# group, so the fallback kill above reaches its plugins and nothing else.
# ENVD_CONFORMANCE_CANARY must not leak into user processes (WIRE.md §5.1
# step 6); a test checks it.
set -m
# shellcheck disable=SC2086
ENVD_CONFORMANCE_CANARY=leaked "$envd_bin" $envd_flags </dev/null >"$log" 2>&1 &
envd_pid=$!
set +m

healthy=
for _ in $(seq 1 100); do
  if ! kill -0 "$envd_pid" 2>/dev/null; then
    wait "$envd_pid" 2>/dev/null && rc=0 || rc=$?
    envd_pid=
    die "envd-init exited (status $rc) before answering /health"
  fi
  code=$(http_status "http://localhost:$port/health")
  case "$code" in 2??) healthy=1; break ;; esac
  sleep 0.1
done
[ -n "$healthy" ] || die "envd-init did not answer GET /health with 2xx within 10 s (last status: ${code:-none})"
echo "conformance: envd-init (pid $envd_pid, flavor $flavor) is up on port $port"

cd "$here/js"
files=()
if [ "$#" -gt 0 ]; then
  for f in "$@"; do files+=("test/$(basename "$f")"); done
else
  files=(test/*.test.mjs)
fi

runs=${CONFORMANCE_RUNS:-1}
pause=${CONFORMANCE_PAUSE:-0}
set +e
status=0
for run in $(seq 1 "$runs"); do
  sleep "$pause"
  # The bench's memory sampler (test/bench conformance) reads these lines.
  echo "conformance: run $run of $runs starts"
  # ENVD_INIT_PID: tests that crash a plugin find it among envd-init's children.
  ENVD_INIT_PID=$envd_pid ENVD_CONFORMANCE_FLAVOR=$flavor E2B_DEBUG=true node --test --test-concurrency=1 --test-timeout=120000 "${files[@]}"
  rc=$?
  echo "conformance: run $run of $runs ends (status $rc)"
  [ "$rc" -eq 0 ] || status=$rc
done
sleep "$pause"
set -e
exit "$status"
