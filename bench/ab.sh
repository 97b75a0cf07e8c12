#!/usr/bin/env bash
# bench/ab.sh: two Concord builds against each other, under the same load.
#
# For each round, and for each of the two binaries in turn, starts a fresh
# 3-member cluster of that binary on loopback ports, optionally preloads it,
# runs one `concord bench` workload against all three members, and stops it.
# Prints one line per run (throughput, p99, the members' CPU per operation) and
# the means per binary. On a small VM, runs vary by ±10%: alternate, and
# distrust differences smaller than that.
#
# Usage:  bench/ab.sh OLD_BINARY NEW_BINARY
# Environment knobs (all optional):
#   ROUNDS=3        runs per binary
#   DUR=10s         length of each run
#   WL='put --clients 1000 --conns 100 --val-size 256 --key-space 100000'
#                   the workload (`concord bench` arguments, without --duration)
#   PRE=            a bench run before the measured one (e.g. a preload for reads:
#                   'put --clients 64 --conns 8 --total 10000 --val-size 256 --key-space 10000 --sequential-keys')
#   BASE_PORT=25000 clients on BASE+1..3, peers on BASE+11..13
#   ETCDCTL=/usr/bin/etcdctl   used to wait for the cluster's health
set -euo pipefail

[ $# -eq 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-10s}
WL=${WL:-put --clients 1000 --conns 100 --val-size 256 --key-space 100000}
PRE=${PRE:-}
BP=${BASE_PORT:-25000}
ETCDCTL=${ETCDCTL:-/usr/bin/etcdctl}
CLK_TCK=$(getconf CLK_TCK)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/concord-ab.XXXXXX")
PIDS=()

stop_members() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_members; rm -rf "$WORK"' EXIT

cpu_ticks() {
  local pid total=0
  for pid in "${PIDS[@]}"; do
    total=$((total + $(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")))
  done
  echo "$total"
}

field() { grep -o "\"$1\":[0-9.]*" <<<"$2" | head -n 1 | cut -d: -f2; }

# run BINARY: one fresh cluster, one measured run; prints "rps p99_ms cpu_us_per_op".
run() {
  local bin=$1 i cluster="" ep out t0 t1 n
  rm -rf "$WORK/data"; mkdir -p "$WORK/data"
  for i in 1 2 3; do cluster+="${cluster:+,}m$i=http://127.0.0.1:$((BP + 10 + i))"; done
  for i in 1 2 3; do
    "$bin" serve --name "m$i" --data-dir "$WORK/data/m$i" \
      --listen-client-urls "http://127.0.0.1:$((BP + i))" --advertise-client-urls "http://127.0.0.1:$((BP + i))" \
      --listen-peer-urls "http://127.0.0.1:$((BP + 10 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((BP + 10 + i))" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token ab >"$WORK/data/m$i.log" 2>&1 &
    PIDS+=($!)
  done
  ep="127.0.0.1:$((BP + 1)),127.0.0.1:$((BP + 2)),127.0.0.1:$((BP + 3))"
  for i in $(seq 150); do
    ETCDCTL_API=3 timeout 5 "$ETCDCTL" --endpoints="$ep" endpoint health >/dev/null 2>&1 && break
    [ "$i" -lt 150 ] || { echo "cluster of $bin not healthy" >&2; exit 1; }
    sleep 0.2
  done
  # shellcheck disable=SC2086
  if [ -n "$PRE" ]; then "$bin" bench --endpoints="$ep" $PRE >/dev/null 2>&1; fi
  t0=$(cpu_ticks)
  # shellcheck disable=SC2086
  out=$("$bin" bench --json --endpoints="$ep" $WL --duration "$DUR" 2>/dev/null)
  t1=$(cpu_ticks)
  stop_members
  n=$(field ok "$out")
  echo "$(field requests_per_sec "$out") $(field p99_ms "$out") $(( (t1 - t0) * 1000000 / CLK_TCK / ${n:-1} ))"
}

declare -A SUM_RPS=() SUM_CPU=()
for ((r = 1; r <= ROUNDS; r++)); do
  for which in old new; do
    if [ $which = old ]; then bin=$1; else bin=$2; fi
    read -r rps p99 cpu <<<"$(run "$bin")"
    printf '%s round %d: %s req/s, p99 %s ms, %s us CPU per op\n' "$which" "$r" "$rps" "$p99" "$cpu"
    SUM_RPS[$which]=$(awk -v a="${SUM_RPS[$which]:-0}" -v b="$rps" 'BEGIN { print a + b }')
    SUM_CPU[$which]=$((${SUM_CPU[$which]:-0} + cpu))
  done
done
for which in old new; do
  awk -v w="$which" -v s="${SUM_RPS[$which]}" -v c="${SUM_CPU[$which]}" -v n="$ROUNDS" \
    'BEGIN { printf "%s mean: %.0f req/s, %.0f us CPU per op\n", w, s / n, c / n }'
done
