#!/usr/bin/env bash
# scripts/python-etcd3-suite.sh: python-etcd3 0.12.0's own test suite against etcd and Concord.
#
# A manual measurement of "drop-in for etcd users" (not part of CI). It
#   1. downloads python-etcd3 0.12.0's sdist (which carries tests/) with pip into a scratch dir,
#      and makes a venv there with etcd3==0.12.0 and what its tests import;
#   2. starts a 3-member etcd cluster (/usr/bin/etcd), runs pytest against its first member (on
#      127.0.0.1:2379, in a network namespace of the script's own: see below), stops it; then the
#      same with a 3-member Concord cluster (concord serve, etcd's flags);
#   3. prints "etcd: N passed / M failed; concord: ..." and the tests whose outcome differs.
#
# The members are named pifpaf0..2 because the suite's serializable-read tests SIGSTOP the
# processes whose command line matches `--name pifpaf[12]` (pifpaf is the fixture tool the suite
# was written for), so that the endpoint (pifpaf0) is left without a quorum. The clusters run one
# after the other so that only the cluster under test is matched; two runs of this script at once
# would stop each other's members. Nothing of the suite is copied into this repository; it lives
# in the scratch dir. Takes about 4 minutes (plus the download and the build the first time).
#
# Usage:  scripts/python-etcd3-suite.sh [extra pytest args, e.g. -k watch]
# Environment knobs (all optional):
#   SCRATCH=/tmp/python-etcd3-suite   where the sdist, the venv and the clusters' data dirs go
#   SKIP_BUILD=1                      do not run `cargo build -p concord --bin concord`
#   ONLY=etcd|concord                 run against one system only
#   KEEP=1                            keep the clusters' data dirs and logs
#   ETCD=, ETCDCTL=, CONCORD=, PYTHON=   binaries to use (CONCORD defaults to target/debug/concord)
#   RUN_TIMEOUT=1200                  seconds after which one pytest run is abandoned
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ETCD=${ETCD:-/usr/bin/etcd}
ETCDCTL=${ETCDCTL:-/usr/bin/etcdctl}
CONCORD=${CONCORD:-$REPO/target/debug/concord}
PYTHON=${PYTHON:-python3}
SCRATCH=${SCRATCH:-/tmp/python-etcd3-suite}
RUN_TIMEOUT=${RUN_TIMEOUT:-1200}
ONLY=${ONLY:-}
VERSION=0.12.0
export ETCDCTL_API=3

log() { printf '[python-etcd3 %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -x "$ETCD" ] || die "no etcd binary at $ETCD"
command -v "$ETCDCTL" >/dev/null || die "no etcdctl at $ETCDCTL"
if [ "$ONLY" != etcd ]; then
  if [ -z "${SKIP_BUILD:-}" ]; then
    log "building concord (debug)"
    (cd "$REPO" && nice -n 19 cargo build -p concord --bin concord) || die "cargo build failed"
  fi
  [ -x "$CONCORD" ] || die "no concord binary at $CONCORD"
fi

# --- 1. the suite and its venv -------------------------------------------------------------
mkdir -p "$SCRATCH"
SUITE=$SCRATCH/etcd3-$VERSION
VENV=$SCRATCH/venv
if [ ! -f "$SUITE/tests/test_etcd3.py" ]; then
  log "downloading python-etcd3 $VERSION's sdist"
  "$PYTHON" -m pip download --quiet "etcd3==$VERSION" --no-binary :all: --no-deps -d "$SCRATCH"
  tar -xzf "$SCRATCH/etcd3-$VERSION.tar.gz" -C "$SCRATCH"
fi
if [ ! -x "$VENV/bin/pytest" ]; then
  log "making the venv"
  "$PYTHON" -m venv "$VENV"
  # Versions of 0.12's time: its generated protobuf modules predate protobuf 4's runtime; its
  # Lock hands tenacity a two-argument wait function, which tenacity 7 no longer calls (0.12
  # pins 6.1.0); and hypothesis 5+ refuses its @given tests that use a function-scoped fixture.
  "$VENV/bin/pip" install --quiet "etcd3==$VERSION" grpcio 'protobuf<4' 'tenacity==6.1.0' 'hypothesis<5' \
    pytest mock six
fi

# The suite's alarm tests and test_compact talk to the default endpoint, localhost:2379, whatever
# PYTHON_ETCD_HTTP_URL says. So the clusters run in a network namespace of their own, where 2379
# is free whatever runs on the host; without one, 2379 must be free on the host.
if [ -z "${IN_NETNS:-}" ]; then
  for ns in "unshare --net" "unshare --user --map-root-user --net"; do
    if $ns true 2>/dev/null; then
      log "running the clusters in a private network namespace ($ns)"
      exec $ns env IN_NETNS=1 SKIP_BUILD=1 "$0" "$@"
    fi
  done
  log "warning: no network namespace available; the first member takes the host's port 2379"
else
  ip link set lo up
fi

# --- 2. the clusters -------------------------------------------------------------------------
WORK=$(mktemp -d "$SCRATCH/run.XXXXXX")
declare -A PID=()

stop_members() {
  local name pid deadline
  for name in "${!PID[@]}"; do kill -CONT "${PID[$name]}" 2>/dev/null || true; done
  for name in "${!PID[@]}"; do kill -TERM "${PID[$name]}" 2>/dev/null || true; done
  deadline=$((SECONDS + 10))
  for name in "${!PID[@]}"; do
    pid=${PID[$name]}
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PID=()
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_members
  if [ -n "${KEEP:-}" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# free_ports N: N distinct loopback ports that were free a moment ago (bound to port 0, released).
free_ports() {
  "$PYTHON" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# start_cluster KIND: members pifpaf0..2 of KIND (etcd or concord); sets CLIENT0 to the first
# member's client URL.
start_cluster() {
  local kind=$1 i cluster=""
  local -a ports bin
  read -r -a ports <<<"2379 $(free_ports 5)"
  for i in 0 1 2; do cluster+="${cluster:+,}pifpaf$i=http://127.0.0.1:${ports[$((3 + i))]}"; done
  if [ "$kind" = etcd ]; then bin=("$ETCD"); else bin=("$CONCORD" serve); fi
  for i in 0 1 2; do
    local curl=http://127.0.0.1:${ports[$i]} purl=http://127.0.0.1:${ports[$((3 + i))]}
    "${bin[@]}" --name "pifpaf$i" --data-dir "$WORK/$kind-$i.data" \
      --listen-client-urls "$curl" --advertise-client-urls "$curl" \
      --listen-peer-urls "$purl" --initial-advertise-peer-urls "$purl" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "pyetcd3-$kind" \
      >"$WORK/$kind-$i.log" 2>&1 &
    PID[$kind-$i]=$!
  done
  CLIENT0=http://127.0.0.1:${ports[0]}
  local deadline=$((SECONDS + 60))
  for i in 0 1 2; do
    until timeout 5 "$ETCDCTL" --endpoints="http://127.0.0.1:${ports[$i]}" --dial-timeout=2s \
      --command-timeout=3s endpoint health >/dev/null 2>&1; do
      kill -0 "${PID[$kind-$i]}" 2>/dev/null || { tail -n 30 "$WORK/$kind-$i.log" >&2; die "$kind-$i exited"; }
      [ $SECONDS -lt $deadline ] || { tail -n 30 "$WORK/$kind-$i.log" >&2; die "$kind-$i not healthy in 60s"; }
      sleep 0.3
    done
  done
  log "$kind cluster healthy; the suite talks to $CLIENT0"
}

# run_suite KIND: pytest against KIND's cluster; junit XML to $WORK/KIND.xml, output to KIND.out.
run_suite() {
  local kind=$1 rc=0
  shift
  rm -f "$SCRATCH/$kind.xml" "$SCRATCH/$kind.out"
  start_cluster "$kind"
  (
    cd "$SUITE"
    # TEST_ETCD_VERSION only decides which tests are skipped as needing a newer etcd: none are.
    # test_user_pwd_auth patches `etcdrpc.AuthStub`, a top-level name only with etcd3/ on the path.
    # The suite runs `etcdctl` from PATH.
    PATH="$VENV/bin:$(dirname "$(command -v "$ETCDCTL")"):$PATH" PYTHONPATH="$SUITE/etcd3" \
      PYTHON_ETCD_HTTP_URL=$CLIENT0 TEST_ETCD_VERSION=v3.4.23 \
      timeout "$RUN_TIMEOUT" pytest -p no:cacheprovider -q -rfE --junitxml="$WORK/$kind.xml" tests "$@"
  ) >"$WORK/$kind.out" 2>&1 || rc=$?
  [ $rc -ne 124 ] || log "$kind: pytest timed out after ${RUN_TIMEOUT}s"
  tail -n 1 "$WORK/$kind.out" | sed "s/^/[$kind] /" >&2
  stop_members
  cp "$WORK/$kind.xml" "$WORK/$kind.out" "$SCRATCH/" 2>/dev/null || true
}

KINDS=(etcd concord)
[ -z "$ONLY" ] || KINDS=("$ONLY")
for kind in "${KINDS[@]}"; do run_suite "$kind" "$@"; done

# --- 3. the summary --------------------------------------------------------------------------
"$PYTHON" - "$SCRATCH" "${KINDS[@]}" <<'EOF'
import sys
import xml.etree.ElementTree as ET

scratch, kinds = sys.argv[1], sys.argv[2:]
results = {}
for kind in kinds:
    outcome = {}
    try:
        root = ET.parse(f"{scratch}/{kind}.xml").getroot()
    except (OSError, ET.ParseError) as e:
        print(f"{kind}: no results ({e})")
        continue
    for case in root.iter("testcase"):
        # test_sort_order is in two classes: names are class.test.
        name = f'{case.get("classname", "").rsplit(".", 1)[-1]}.{case.get("name")}'
        tags = {child.tag for child in case}
        outcome[name] = ("failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed")
    results[kind] = outcome

def counts(outcome):
    n = {k: sum(1 for v in outcome.values() if v == k) for k in ("passed", "failed", "skipped")}
    return f"{n['passed']} passed / {n['failed']} failed" + (f" / {n['skipped']} skipped" if n["skipped"] else "")

print("; ".join(f"{kind}: {counts(outcome)}" for kind, outcome in results.items()))
for kind, outcome in results.items():
    failed = sorted(name for name, v in outcome.items() if v == "failed")
    print(f"{kind} failed: {' '.join(failed) or '-'}")
if len(results) == 2:
    (ka, a), (kb, b) = results.items()
    differ = sorted(name for name in set(a) | set(b) if a.get(name) != b.get(name))
    print("differ:" if differ else "differ: none")
    for name in differ:
        print(f"  {name}: {ka} {a.get(name, 'absent')}, {kb} {b.get(name, 'absent')}")
EOF
log "pytest output and junit XML: $SCRATCH/{etcd,concord}.{out,xml}"
