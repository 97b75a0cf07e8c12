#!/usr/bin/env bash
# What idle shards cost: MEMBERS members (1 and 3 by default) started with SHARDS static shards
# (`--experimental-initial-shards`), nothing written. Once the members report their shards'
# groups hibernating (or after WAIT_S seconds), it samples each member's CPU time from
# /proc/<pid>/stat over SAMPLE_S seconds, and its resident memory, and prints one line per
# cluster size: CPU as a share of one core per member, RSS per member, and how many groups
# hibernate. Issue 18 asks for 1,000 idle shards on a member in under 5% of a core and 300 MiB.
#
#   cargo build --release -p concord && bench/idle-shards.sh
#   SHARDS=1000 MEMBERS="1 3" SAMPLE_S=30 bench/idle-shards.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SHARDS=${SHARDS:-1000}
MEMBERS=${MEMBERS:-"1 3"}
SAMPLE_S=${SAMPLE_S:-30}
WAIT_S=${WAIT_S:-120}
BIN=${BIN:-target/release/concord}
BASE_PORT=${BASE_PORT:-24100}
[ -x "$BIN" ] || { echo "build first: cargo build --release -p concord" >&2; exit 1; }

keys=$(seq -f 'k%04g' 1 "$SHARDS" | paste -sd, -)
clk_tck=$(getconf CLK_TCK)
work=$(mktemp -d /tmp/idle-shards.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]:-}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_mib() { awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$1/status"; }
hibernating() {
  curl -s "http://127.0.0.1:$1/metrics" | awk '/^concord_raft_hibernating_groups / {print $2}'
}

printf '%-8s %-8s %-22s %-12s %-10s %s\n' members shards "cpu per member" "rss (MiB)" threads hibernating
for n in $MEMBERS; do
  pids=()
  cluster=""
  for i in $(seq 0 $((n - 1))); do
    cluster+="${cluster:+,}m$i=http://127.0.0.1:$((BASE_PORT + 2 * i + 1))"
  done
  for i in $(seq 0 $((n - 1))); do
    client=$((BASE_PORT + 2 * i)); peer=$((BASE_PORT + 2 * i + 1))
    "$BIN" serve --name "m$i" --data-dir "$work/$n-m$i" \
      --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "$cluster" --experimental-initial-shards="$keys" --log-level warn \
      >"$work/$n-m$i.log" 2>&1 &
    pids+=($!)
  done
  # Every member holds every shard with up to 3 members; with more, fewer.
  want=$SHARDS
  deadline=$((SECONDS + WAIT_S))
  for i in $(seq 0 $((n - 1))); do
    while [ "$(hibernating $((BASE_PORT + 2 * i)) || true)" != "$want" ] && [ $SECONDS -lt $deadline ]; do
      sleep 1
    done
  done
  before=(); for pid in "${pids[@]}"; do before+=("$(cpu_ticks "$pid")"); done
  sleep "$SAMPLE_S"
  shares=(); rss=(); threads=(); quiet=()
  for k in "${!pids[@]}"; do
    pid=${pids[$k]}
    used=$(( $(cpu_ticks "$pid") - ${before[$k]} ))
    shares+=("$(awk -v u="$used" -v t="$clk_tck" -v s="$SAMPLE_S" 'BEGIN {printf "%.1f%%", 100 * u / t / s}')")
    rss+=("$(rss_mib "$pid")")
    threads+=("$(ls "/proc/$pid/task" | wc -l)")
    quiet+=("$(hibernating $((BASE_PORT + 2 * k)) || echo '?')")
  done
  printf '%-8s %-8s %-22s %-12s %-10s %s\n' "$n" "$SHARDS" "$(IFS=/; echo "${shares[*]}")" \
    "$(IFS=/; echo "${rss[*]}")" "$(IFS=/; echo "${threads[*]}")" "$(IFS=/; echo "${quiet[*]}")"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
done
