#!/usr/bin/env bash
# bench/scale.sh: does Concord grow by adding machines?
#
# Starts one Concord cluster per size in SIZES, every member in its own cgroup with the same CPU
# quota (cgroup v1 `cpu` controller: QUOTA_US of every PERIOD_US, 0.15 core by default), so that
# each member is a small machine of its own and the members, not this host, are the limit. The
# load generator (`concord bench put`, 1000 clients over 100 connections spread over every
# member) runs outside the cgroups. A cluster of 3 members is today's cluster: one shard, one
# Raft group on every member. A cluster of N > 3 members is split into N data shards at start
# (`--experimental-initial-shards`, at the first byte of the bench's keys), each on 3 members
# round the ring, with shard i's leadership moved to the i-th member so every member leads one;
# the metadata group (the revision oracle, leases) is on all of them and holds no bench keys.
#
# The clusters run side by side and the rounds alternate (3, N, 3, N, ...). At the end it prints
# each round's puts/s, the ratio of each size to 3 members (median and worst round), the members'
# CPU per put, and whether every member was throttled at its quota (nr_throttled / nr_periods
# above one half during the runs); a size whose members were not is not CPU-bound and says so.
#
# Usage:  sudo bench/scale.sh            (root: it creates cgroups)
# Environment knobs (all optional):
#   SIZES="3 6"      cluster sizes; the first is the baseline
#   ROUNDS=5         runs per size, alternating
#   DURATION=10s     length of each run
#   QUOTA_US=1500 PERIOD_US=10000   each member's CPU quota
#   BASE_PORT=26000  member k of the cluster of size n listens on BASE+100n+k (client), +50 (peer)
#   SHARDS_n=k       data shards of the cluster of n members (default n when n > 3, else 0:
#                    one shard, today's path)
#   FLAGS_n="..."    more `concord serve` flags for the members of the cluster of n members
#   SKIP_BUILD=1     do not run `cargo build --release -p concord`
#   KEEP=1           keep the work dir (data dirs and member logs)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
CONCORD=${CONCORD:-$REPO/target/release/concord}
SIZES=${SIZES:-"3 6"}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
QUOTA_US=${QUOTA_US:-1500}
PERIOD_US=${PERIOD_US:-10000}
BASE_PORT=${BASE_PORT:-26000}
RUN_TIMEOUT=${RUN_TIMEOUT:-120}
LOAD=(put --clients 1000 --conns 100 --val-size 256 --key-space 100000 --duration "$DURATION")
CPU_CG=/sys/fs/cgroup/cpu/concord-scale
ACCT_CG=/sys/fs/cgroup/cpuacct/concord-scale

log() { printf '[scale %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -w /sys/fs/cgroup/cpu ] || die "needs the cgroup v1 cpu controller, writable (run as root)"
[ -w /sys/fs/cgroup/cpuacct ] || die "needs the cgroup v1 cpuacct controller, writable (run as root)"
if [ -z "${SKIP_BUILD:-}" ]; then
  log "building concord (release)"
  (cd "$REPO" && cargo build --release -p concord) || die "cargo build failed"
fi
[ -x "$CONCORD" ] || die "no concord binary at $CONCORD"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/concord-scale.XXXXXX")
declare -A PID=() SHARDS=()

cleanup() {
  local rc=$? name
  trap - EXIT INT TERM
  for name in "${!PID[@]}"; do kill -KILL "${PID[$name]}" 2>/dev/null || true; done
  for name in "${!PID[@]}"; do wait "${PID[$name]}" 2>/dev/null || true; done
  for dir in "$CPU_CG"/* "$ACCT_CG"/*; do [ -d "$dir" ] && rmdir "$dir" 2>/dev/null || true; done
  rmdir "$CPU_CG" "$ACCT_CG" 2>/dev/null || true
  if [ -n "${KEEP:-}" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

client_port() { echo $((BASE_PORT + 100 * $1 + $2)); }
peer_port() { echo $((BASE_PORT + 100 * $1 + 50 + $2)); }
endpoints() {
  local n=$1 k out=""
  for k in $(seq 1 "$n"); do out+="${out:+,}127.0.0.1:$(client_port "$n" "$k")"; done
  echo "$out"
}

# The split keys for N data shards: the bench's keys are Go varints of numbers below 100000,
# whose first byte is even and at least 0x80 for all but 64 of them; the metadata group keeps
# the keys below 0x80.
split_keys() {
  local n=$1 k out=""
  for k in $(seq 0 $((n - 1))); do out+="${out:+,}$(printf '\\x%02x' $((0x80 + k * 128 / n)))"; done
  echo "$out"
}

# start_cluster N: N members, each in cgroups of its own with the quota.
start_cluster() {
  local n=$1 k cluster="" name extra=()
  for k in $(seq 1 "$n"); do cluster+="${cluster:+,}s$n-m$k=http://127.0.0.1:$(peer_port "$n" "$k")"; done
  local shards_var="SHARDS_$n" flags_var="FLAGS_$n" shards
  shards=${!shards_var:-$([ "$n" -gt 3 ] && echo "$n" || echo 0)}
  if [ "$shards" -gt 0 ]; then extra=(--experimental-initial-shards "$(split_keys "$shards")"); fi
  # shellcheck disable=SC2206 # FLAGS_n is a list of words
  extra+=(${!flags_var:-})
  SHARDS[$n]=$shards
  for k in $(seq 1 "$n"); do
    name=s$n-m$k
    mkdir -p "$CPU_CG/$name" "$ACCT_CG/$name"
    echo "$PERIOD_US" >"$CPU_CG/$name/cpu.cfs_period_us"
    echo "$QUOTA_US" >"$CPU_CG/$name/cpu.cfs_quota_us"
    # The shell joins the cgroups, then becomes the member: every thread it starts is inside.
    sh -c 'echo $$ >"$1/cgroup.procs"; echo $$ >"$2/cgroup.procs"; shift 2; exec "$@"' sh \
      "$CPU_CG/$name" "$ACCT_CG/$name" "$CONCORD" serve --name "$name" --data-dir "$WORK/$name.data" \
      --listen-client-urls "http://127.0.0.1:$(client_port "$n" "$k")" \
      --advertise-client-urls "http://127.0.0.1:$(client_port "$n" "$k")" \
      --listen-peer-urls "http://127.0.0.1:$(peer_port "$n" "$k")" \
      --initial-advertise-peer-urls "http://127.0.0.1:$(peer_port "$n" "$k")" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "scale-$n" \
      "${extra[@]}" >"$WORK/$name.log" 2>&1 &
    PID[$name]=$!
  done
}

# wait_ready N: every member answers, and (sharded) every shard has a leader.
wait_ready() {
  local n=$1 deadline=$((SECONDS + 90)) k
  for k in $(seq 1 "$n"); do
    until "$CONCORD" endpoint health --endpoints "127.0.0.1:$(client_port "$n" "$k")" >/dev/null 2>&1; do
      kill -0 "${PID[s$n-m$k]}" 2>/dev/null || { tail -n 20 "$WORK/s$n-m$k.log" >&2; die "s$n-m$k exited"; }
      [ $SECONDS -lt $deadline ] || die "s$n-m$k not healthy after 90s"
      sleep 0.5
    done
  done
  log "cluster of $n healthy"
}

# balance_leaders N: data shard i (group i + 2) is led by the i-th member in id order, one of
# its replicas (shards sit on the members from position i on, round the ring of ids).
balance_leaders() {
  local n=$1 members i group id endpoint shards=${SHARDS[$n]}
  members=$("$CONCORD" member list -w json --endpoints "$(endpoints "$n")" |
    python3 -c 'import json,sys
ms = json.load(sys.stdin)["members"]
for m in sorted(ms, key=lambda m: int(m["ID"])): print(format(int(m["ID"]), "x"), m["clientURLs"][0])')
  mapfile -t members <<<"$members"
  for i in $(seq 0 $((shards - 1))); do
    group=$((i + 2))
    read -r id endpoint <<<"${members[$((i % n))]}"
    local deadline=$((SECONDS + 30))
    until "$CONCORD" shard transfer-leader "$group" "$id" --endpoints "$endpoint" >/dev/null 2>&1; do
      [ $SECONDS -lt $deadline ] || die "cannot move shard $group's leadership to $id"
      sleep 0.5
    done
  done
  log "cluster of $n: data shard i led by member i (mod $n)"
}

# cgroup_sum N FILE FIELD: the sum over N's members of FIELD of FILE (cpu.stat) or of the
# file itself (FIELD -).
cgroup_sum() {
  local n=$1 file=$2 field=$3 k total=0 v
  for k in $(seq 1 "$n"); do
    if [ "$field" = - ]; then v=$(cat "$ACCT_CG/s$n-m$k/$file")
    else v=$(awk -v f="$field" '$1 == f { print $2 }' "$CPU_CG/s$n-m$k/$file"); fi
    total=$((total + v))
  done
  echo "$total"
}

# member_stats N: each of N's members' "periods throttled" counters, one line each.
member_stats() {
  local n=$1 k
  for k in $(seq 1 "$n"); do
    awk '$1 == "nr_periods" { p = $2 } $1 == "nr_throttled" { t = $2 } END { print p, t }' "$CPU_CG/s$n-m$k/cpu.stat"
  done
}

field() {
  awk -v k="\"$1\":" '{ i = index($0, k); if (i) { s = substr($0, i + length(k)); match(s, /^[-0-9.eE+]*/); print substr(s, 1, RLENGTH) } }' <<<"$2"
}

for n in $SIZES; do start_cluster "$n"; done
for n in $SIZES; do wait_ready "$n"; [ "${SHARDS[$n]}" -gt 0 ] && balance_leaders "$n"; done

declare -A RATE=() CPU_PER_PUT=() THROTTLED=()
for round in $(seq 1 "$ROUNDS"); do
  for n in $SIZES; do
    before=$(member_stats "$n")
    cpu0=$(cgroup_sum "$n" cpuacct.usage -)
    out=$(timeout "$RUN_TIMEOUT" "$CONCORD" bench --json --endpoints "$(endpoints "$n")" "${LOAD[@]}" 2>"$WORK/bench.err") ||
      die "bench on $n members failed: $(tail -n 1 "$WORK/bench.err")"
    cpu_ns=$(( $(cgroup_sum "$n" cpuacct.usage -) - cpu0 ))
    after=$(member_stats "$n")
    rate=$(field requests_per_sec "$out")
    requests=$(field ok "$out")
    throttled=$(paste <(echo "$before") <(echo "$after") |
      awk '{ dp = $3 - $1; dt = $4 - $2; if (dp > 0 && dt / dp > 0.5) c++ } END { print c + 0 }')
    RATE[$n,$round]=$rate
    CPU_PER_PUT[$n,$round]=$(awk -v c="$cpu_ns" -v r="$requests" 'BEGIN { printf "%.0f", (r > 0 ? c / r / 1000 : 0) }')
    THROTTLED[$n,$round]=$throttled
    log "round $round, $n members: $rate puts/s, ${CPU_PER_PUT[$n,$round]} µs of member CPU per put, $throttled/$n members throttled, errors $(field errors "$out")"
  done
done

base=${SIZES%% *}
echo
echo "| round | $(for n in $SIZES; do printf '%s members puts/s | ' "$n"; done)$(for n in $SIZES; do [ "$n" = "$base" ] || printf '%s/%s | ' "$n" "$base"; done)"
echo "|---|$(for n in $SIZES; do printf -- '---|'; done)$(for n in $SIZES; do [ "$n" = "$base" ] || printf -- '---|'; done)"
for round in $(seq 1 "$ROUNDS"); do
  printf '| %s | ' "$round"
  for n in $SIZES; do printf '%s | ' "${RATE[$n,$round]}"; done
  for n in $SIZES; do
    [ "$n" = "$base" ] || awk -v a="${RATE[$n,$round]}" -v b="${RATE[$base,$round]}" 'BEGIN { printf "%.2f× | ", a / b }'
  done
  echo
done
echo
for n in $SIZES; do
  ratios=$(for round in $(seq 1 "$ROUNDS"); do awk -v a="${RATE[$n,$round]}" -v b="${RATE[$base,$round]}" 'BEGIN { print a / b }'; done | sort -g)
  cpu=$(for round in $(seq 1 "$ROUNDS"); do echo "${CPU_PER_PUT[$n,$round]}"; done | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  throttled=$(for round in $(seq 1 "$ROUNDS"); do echo "${THROTTLED[$n,$round]}"; done | sort -g | head -n 1)
  median=$(awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }' <<<"$ratios")
  worst=$(head -n 1 <<<"$ratios")
  bound="every member throttled at its quota in every round"
  [ "$throttled" -lt "$n" ] && bound="NOT CPU-bound: as few as $throttled of $n members throttled in a round"
  printf '%s members: median %.2f× of %s members (worst round %.2f×), median %s µs of member CPU per put; %s\n' \
    "$n" "$median" "$base" "$worst" "$cpu" "$bound"
done
