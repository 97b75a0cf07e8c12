#!/usr/bin/env bash
# bench/compare.sh: etcd and Concord side by side, under the same load.
#
# Starts a 3-member etcd cluster (/usr/bin/etcd) and a 3-member Concord
# cluster (target/release/concord serve) with the same flags, on loopback
# ports, with data dirs under one temp dir (so both fsync to the same disk).
# Then runs the same `concord bench` load against each, alternating
# (etcd, concord, etcd, concord, ...), and prints a table of requests/s and
# p99 latency, followed by the RSS of every member.
#
# Usage:  bench/compare.sh
# Environment knobs (all optional):
#   ROUNDS=2          runs of each workload per system (alternating)
#   BASE_PORT=24000   etcd uses BASE+1..3 (client), BASE+11..13 (peer);
#                     Concord BASE+101..103 and BASE+111..113
#   RUN_TIMEOUT=100   seconds after which one bench run is abandoned
#   SKIP_BUILD=1      do not run `cargo build --release -p concord`
#   KEEP=1            keep the temp dir (data dirs and member logs)
#   ETCD=, ETCDCTL=, CONCORD=   binaries to use
#
# The bench load goes to all three members (connection i to member i % 3);
# with --conns 1 that means member 1 only, which may or may not be the leader,
# so the leaders are printed too.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
ETCD=${ETCD:-/usr/bin/etcd}
ETCDCTL=${ETCDCTL:-/usr/bin/etcdctl}
CONCORD=${CONCORD:-$REPO/target/release/concord}
ROUNDS=${ROUNDS:-2}
BASE_PORT=${BASE_PORT:-24000}
RUN_TIMEOUT=${RUN_TIMEOUT:-100}
HEALTH_DEADLINE=${HEALTH_DEADLINE:-60}
export ETCDCTL_API=3

# The workloads: "label|bench arguments". The range rows read the keys that
# the preload below writes (same --key-space and --key-size).
PRELOAD_KEYS=10000
WORKLOADS=(
  "put c64/n8 256B|put --clients 64 --conns 8 --total 50000 --val-size 256 --key-space 100000"
  "put c1/n1 256B|put --clients 1 --conns 1 --total 2000 --val-size 256 --key-space 100000"
  "range-l c64/n8|range --consistency l --clients 64 --conns 8 --total 50000 --key-space $PRELOAD_KEYS"
)
PRELOAD="put --clients 64 --conns 8 --total $PRELOAD_KEYS --val-size 256 --key-space $PRELOAD_KEYS --sequential-keys"

log() { printf '[compare %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -x "$ETCD" ] || die "no etcd binary at $ETCD"
[ -x "$ETCDCTL" ] || die "no etcdctl binary at $ETCDCTL"
if [ -z "${SKIP_BUILD:-}" ]; then
  log "building concord (release)"
  (cd "$REPO" && cargo build --release -p concord) || die "cargo build failed"
fi
[ -x "$CONCORD" ] || die "no concord binary at $CONCORD"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/concord-compare.XXXXXX")
declare -A PID=()      # "etcd-1" -> pid

cleanup() {
  local rc=$? name pid deadline
  trap - EXIT INT TERM
  for name in "${!PID[@]}"; do kill -TERM "${PID[$name]}" 2>/dev/null || true; done
  deadline=$((SECONDS + 10))
  for name in "${!PID[@]}"; do
    pid=${PID[$name]}
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name (pid $pid) did not stop in time; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  if [ -n "${KEEP:-}" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_cluster KIND OFFSET: starts members KIND-1..3 on BASE_PORT+OFFSET+{1,2,3}
# (client) and BASE_PORT+OFFSET+{11,12,13} (peer).
start_cluster() {
  local kind=$1 off=$2 i cluster="" cport pport
  for i in 1 2 3; do
    cluster+="${cluster:+,}$kind-$i=http://127.0.0.1:$((BASE_PORT + off + 10 + i))"
  done
  for i in 1 2 3; do
    cport=$((BASE_PORT + off + i)); pport=$((BASE_PORT + off + 10 + i))
    port_in_use $cport && die "port $cport is in use (set BASE_PORT)"
    port_in_use $pport && die "port $pport is in use (set BASE_PORT)"
    local -a bin
    if [ "$kind" = etcd ]; then bin=("$ETCD"); else bin=("$CONCORD" serve); fi
    "${bin[@]}" --name "$kind-$i" --data-dir "$WORK/$kind-$i.data" \
      --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
      --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "compare-$kind" \
      >"$WORK/$kind-$i.log" 2>&1 &
    PID[$kind-$i]=$!
  done
}

endpoints() { local off=$1; echo "127.0.0.1:$((BASE_PORT + off + 1)),127.0.0.1:$((BASE_PORT + off + 2)),127.0.0.1:$((BASE_PORT + off + 3))"; }

# wait_healthy KIND OFFSET: polls `etcdctl endpoint health` on each member, bounded.
wait_healthy() {
  local kind=$1 off=$2 i ep deadline=$((SECONDS + HEALTH_DEADLINE))
  for i in 1 2 3; do
    ep=127.0.0.1:$((BASE_PORT + off + i))
    until timeout 5 "$ETCDCTL" --endpoints="$ep" --dial-timeout=2s --command-timeout=3s endpoint health >/dev/null 2>&1; do
      if ! kill -0 "${PID[$kind-$i]}" 2>/dev/null; then
        tail -n 30 "$WORK/$kind-$i.log" >&2
        die "$kind-$i exited during start-up (log above)"
      fi
      if [ $SECONDS -ge $deadline ]; then
        tail -n 30 "$WORK/$kind-$i.log" >&2
        die "$kind-$i not healthy after ${HEALTH_DEADLINE}s (log above)"
      fi
      sleep 0.3
    done
  done
  log "$kind cluster healthy at $(endpoints "$off")"
}

leader_of() {
  local off=$1
  timeout 10 "$ETCDCTL" --endpoints="$(endpoints "$off")" --command-timeout=3s endpoint status 2>/dev/null |
    awk -F', ' '$5 == "true" { print $1 }' | head -n 1
}

# cluster_cpu_ms KIND: CPU time (user + system) used so far by KIND's members, in ms.
CLK_TCK=$(getconf CLK_TCK)
cluster_cpu_ms() {
  local kind=$1 i ticks=0 t
  for i in 1 2 3; do
    t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/${PID[$kind-$i]}/stat" 2>/dev/null || echo 0)
    ticks=$((ticks + t))
  done
  echo $((ticks * 1000 / CLK_TCK))
}

# field NAME JSON: a number from the bench's one-line JSON summary.
field() { sed -n "s/.*\"$1\":\([-0-9.eE+]*\).*/\1/p" <<<"$2"; }

# bench KIND OFFSET ARGS...: runs one bench; prints its JSON line (or nothing).
bench() {
  local kind=$1 off=$2 out rc=0 cpu0; shift 2
  cpu0=$(cluster_cpu_ms "$kind")
  out=$(timeout "$RUN_TIMEOUT" "$CONCORD" bench --json --endpoints="$(endpoints "$off")" "$@" 2>"$WORK/bench.err") || rc=$?
  if [ $rc -ne 0 ]; then
    if [ $rc -eq 124 ]; then log "$kind: bench timed out after ${RUN_TIMEOUT}s: $*"
    else log "$kind: bench failed (exit $rc): $* -- $(head -c 500 "$WORK/bench.err")"; fi
    return 0
  fi
  # Append the members' CPU time during the run (all three members together).
  out="${out%\}},\"server_cpu_ms\":$(( $(cluster_cpu_ms "$kind") - cpu0 ))}"
  local errors; errors=$(field errors "$out")
  if [ "${errors:-0}" != 0 ]; then log "$kind: $errors errors: $(sed -n 's/.*"error_kinds":\(.*\)}$/\1/p' <<<"$out" | head -c 500)"; fi
  log "$kind: $*: $(field requests_per_sec "$out") req/s, p99 $(field p99_ms "$out") ms, errors ${errors:-?}"
  echo "$out"
}

log "work dir $WORK ($(df -h --output=source,fstype "$WORK" | tail -n 1 | tr -s ' '))"
start_cluster etcd 0
start_cluster concord 100
wait_healthy etcd 0
wait_healthy concord 100
log "leaders: etcd $(leader_of 0), concord $(leader_of 100)"

ROWS=()
# cpu_per_req JSON: server CPU microseconds (3 members together) per successful request.
cpu_per_req() {
  local cpu ok; cpu=$(field server_cpu_ms "$1"); ok=$(field ok "$1")
  if [ -n "$cpu" ] && [ -n "$ok" ] && [ "$ok" -gt 0 ]; then echo $((cpu * 1000 / ok)); else echo -; fi
}
add_row() { # label etcd_json concord_json
  local label=$1 e=$2 c=$3 erps crps ep99 cp99 ratio
  erps=$(field requests_per_sec "$e"); crps=$(field requests_per_sec "$c")
  ep99=$(field p99_ms "$e"); cp99=$(field p99_ms "$c")
  [ -n "$erps" ] && [ -n "$(field errors "$e")" ] && [ "$(field errors "$e")" != 0 ] && erps="$erps*"
  [ -n "$crps" ] && [ -n "$(field errors "$c")" ] && [ "$(field errors "$c")" != 0 ] && crps="$crps*"
  if [ -n "$erps" ] && [ -n "$crps" ]; then
    ratio=$(awk -v c="${crps%\*}" -v e="${erps%\*}" 'BEGIN { if (e > 0) printf "%.2f", c / e; else print "-" }')
  else ratio="-"; fi
  ROWS+=("$(printf '%-24s %12s %12s %8s %10s %10s %10s %10s' "$label" "${erps:-FAIL}" "${crps:-FAIL}" "$ratio" \
    "${ep99:-FAIL}" "${cp99:-FAIL}" "$(cpu_per_req "$e")" "$(cpu_per_req "$c")")")
}

for w in "${WORKLOADS[@]}"; do
  label=${w%%|*}; read -r -a args <<<"${w#*|}"
  if [ "${args[0]}" = range ] && [ -z "${PRELOADED:-}" ]; then
    read -r -a pre <<<"$PRELOAD"
    e=$(bench etcd 0 "${pre[@]}"); c=$(bench concord 100 "${pre[@]}")
    add_row "put preload seq 10k" "$e" "$c"
    PRELOADED=1
  fi
  for ((r = 1; r <= ROUNDS; r++)); do
    e=$(bench etcd 0 "${args[@]}")
    c=$(bench concord 100 "${args[@]}")
    add_row "$label #$r" "$e" "$c"
  done
done

echo
echo "Workloads (concord bench, against all 3 members; '*' = some requests failed;"
echo "cpu = user+system CPU of the 3 members together during the run, per successful request):"
for w in "${WORKLOADS[@]}"; do printf '  %-18s %s\n' "${w%%|*}:" "${w#*|}"; done
printf '  %-18s %s\n' "preload:" "$PRELOAD"
echo
printf '%-24s %12s %12s %8s %10s %10s %10s %10s\n' workload "etcd req/s" "concord req/s" "c/e" "etcd p99" "concord p99" "etcd cpu" "concord cpu"
printf '%-24s %12s %12s %8s %10s %10s %10s %10s\n' "" "" "" "" "(ms)" "(ms)" "(us/req)" "(us/req)"
for row in "${ROWS[@]}"; do echo "$row"; done

echo
echo "Member RSS after the runs (VmRSS):"
for kind in etcd concord; do
  line="  $kind:"
  for i in 1 2 3; do
    rss=$(awk '/^VmRSS:/ { printf "%.1f MiB", $2 / 1024 }' "/proc/${PID[$kind-$i]}/status" 2>/dev/null || true)
    line+="  $kind-$i ${rss:-gone}"
  done
  echo "$line"
done

echo
echo "Member log lines that look like trouble (error/warn/panic), per member:"
for kind in etcd concord; do
  for i in 1 2 3; do
    n=$(grep -ciE 'error|warn|panic' "$WORK/$kind-$i.log" || true)
    echo "  $kind-$i: ${n:-0}"
  done
done
for i in 1 2 3; do
  if grep -qiE 'error|panic' "$WORK/concord-$i.log"; then
    echo "  concord-$i, last such lines:"
    grep -iE 'error|panic' "$WORK/concord-$i.log" | tail -n 5 | cut -c1-300 | sed 's/^/    /'
  fi
done
