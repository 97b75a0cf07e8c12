#!/usr/bin/env bash
# bench/split.sh: what an online split costs the clients writing through it.
#
# Starts 3 members with global revisions (`--experimental-stamped-revisions`), loads KEYS keys
# (the etcd benchmark's keys, VAL_SIZE-byte values), then runs a put load (`concord bench put`,
# CLIENTS clients over every member) for DURATION twice: once undisturbed, once with the one shard
# split in half (at \xc0, the middle of the bench's key space) SPLIT_AFTER into the run. It prints
# both runs' throughput and latency, the errors clients saw, and how long the split took.
#
# Usage:  bench/split.sh
# Environment knobs (all optional): KEYS=200000 VAL_SIZE=256 CLIENTS=100 DURATION=20s
#   SPLIT_AFTER=5 (seconds) BASE_PORT=27000 SKIP_BUILD=1 KEEP=1
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CONCORD=${CONCORD:-$REPO/target/release/concord}
KEYS=${KEYS:-200000}
VAL_SIZE=${VAL_SIZE:-256}
CLIENTS=${CLIENTS:-100}
DURATION=${DURATION:-20s}
SPLIT_AFTER=${SPLIT_AFTER:-5}
BASE_PORT=${BASE_PORT:-27000}

log() { printf '[split %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ -z "${SKIP_BUILD:-}" ]; then
  log "building concord (release)"
  (cd "$REPO" && cargo build --release -p concord) || die "cargo build failed"
fi
[ -x "$CONCORD" ] || die "no concord binary at $CONCORD"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/concord-split.XXXXXX")
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [ -z "${KEEP:-}" ]; then rm -rf "$WORK"; else log "kept $WORK"; fi
}
trap cleanup EXIT

client() { echo "127.0.0.1:$((BASE_PORT + $1))"; }
peer() { echo "http://127.0.0.1:$((BASE_PORT + 50 + $1))"; }
INITIAL=""
for i in 0 1 2; do INITIAL+="${INITIAL:+,}m$i=$(peer "$i")"; done
ENDPOINTS="$(client 0),$(client 1),$(client 2)"

for i in 0 1 2; do
  "$CONCORD" serve --name "m$i" --data-dir "$WORK/m$i" \
    --listen-client-urls "http://$(client "$i")" --advertise-client-urls "http://$(client "$i")" \
    --listen-peer-urls "$(peer "$i")" --initial-advertise-peer-urls "$(peer "$i")" \
    --initial-cluster "$INITIAL" --initial-cluster-state new \
    --experimental-stamped-revisions >"$WORK/m$i.log" 2>&1 &
  PIDS+=($!)
done
for _ in $(seq 100); do
  "$CONCORD" endpoint health --endpoints "$ENDPOINTS" >/dev/null 2>&1 && break
  sleep 0.2
done
"$CONCORD" endpoint health --endpoints "$ENDPOINTS" >/dev/null || die "the cluster did not come up"

log "loading $KEYS keys"
"$CONCORD" bench --endpoints "$ENDPOINTS" put --clients "$CLIENTS" --conns 10 --total "$KEYS" \
  --key-space "$KEYS" --sequential-keys --val-size "$VAL_SIZE" >/dev/null

LOAD=(put --clients "$CLIENTS" --conns 10 --key-space "$KEYS" --val-size "$VAL_SIZE" --duration "$DURATION")
log "run 1: $DURATION of puts, no split"
"$CONCORD" bench --endpoints "$ENDPOINTS" "${LOAD[@]}" >"$WORK/plain.txt" 2>&1

log "run 2: $DURATION of puts, split at \\xc0 after ${SPLIT_AFTER}s"
"$CONCORD" bench --endpoints "$ENDPOINTS" "${LOAD[@]}" >"$WORK/split.txt" 2>&1 &
BENCH=$!
sleep "$SPLIT_AFTER"
started=$(date +%s.%N)
"$CONCORD" shard split '\xc0' --endpoints "$ENDPOINTS" --command-timeout 120s >"$WORK/split-answer.txt" 2>&1 \
  || die "the split failed: $(cat "$WORK/split-answer.txt")"
ended=$(date +%s.%N)
wait "$BENCH"

echo "== without a split =="
cat "$WORK/plain.txt"
echo "== with a split ${SPLIT_AFTER}s in =="
cat "$WORK/split.txt"
echo "== the split =="
"$CONCORD" shard list -w table --endpoints "$ENDPOINTS"
printf 'the split took %.2fs (command to answer)\n' "$(echo "$ended - $started" | bc)"
