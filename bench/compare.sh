#!/usr/bin/env bash
# bench/compare.sh: etcd and Concord side by side, under the same load.
#
# Starts a 3-member etcd cluster (/usr/bin/etcd) and a 3-member Concord
# cluster (target/release/concord serve) with the same flags, on loopback
# ports, with data dirs under one temp dir (so both fsync to the same disk).
# Then runs the same `concord bench` workloads against each, alternating
# (etcd, concord, etcd, concord, ...): put (1, 64, and 1000 clients over 100
# connections, the load of etcd's own benchmark documentation), linearizable
# and serializable range (before and after the put rows), txn-put, watch (put-to-event latency) and
# lease-keepalive. Each run is short (DURATION). Every workload runs with each
# driver of DRIVERS: `concord bench`'s own h2 driver, and the etcd-client crate
# as applications use it (`--client etcd-client`: one client per connection,
# each balanced over all three members; the KV workloads only). At the end it
# prints, per driver, a markdown table of throughput and p99 latency, with the
# Concord/etcd ratios, and one of the members' memory (VmRSS after the runs, and
# the VmHWM peak). The whole script takes about 20 minutes with the defaults.
#
# Usage:  bench/compare.sh
# Environment knobs (all optional):
#   ROUNDS=2          runs of each workload per system (alternating); the table
#                     shows the mean of the rounds
#   DURATION=10s      length of each run
#   ONLY=regex        run only the workloads whose label matches (e.g. ONLY='^put c1$')
#   DRIVERS="h2 etcd-client"   the drivers to run the workloads with, in order
#   BASE_PORT=24000   etcd uses BASE+1..3 (client), BASE+11..13 (peer);
#                     Concord BASE+101..103 and BASE+111..113
#   RUN_TIMEOUT=100   seconds after which one bench run is abandoned
#   SKIP_BUILD=1      do not run `cargo build --release -p concord`
#   KEEP=1            keep the temp dir (data dirs and member logs)
#   ETCD=, ETCDCTL=, CONCORD=   binaries to use
#
# The bench load goes to all three members (connection i to member i % 3).
# A run with --conns 1 goes to the system's leader instead: on a follower each
# put would also cross the forwarding hop, and which member leads is chance.
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

DURATION=${DURATION:-10s}
ONLY=${ONLY:-}
DRIVERS=${DRIVERS:-h2 etcd-client}

# The workloads: "label|bench arguments". The range rows read the keys that
# the preload below writes (same --key-space and --key-size), first on the
# freshly preloaded clusters, then again after the put rows have written some
# hundred thousand more revisions (etcd's reads slow down by half by then). The watch row
# has 256 watchers on 64 keys (4 events per put) and paces its puts, so its
# throughput is the pace; its p99 is the put-to-event latency.
PRELOAD_KEYS=10000
WORKLOADS=(
  "range-l c64, 10k keys|range --consistency l --clients 64 --conns 8 --duration $DURATION --key-space $PRELOAD_KEYS"
  "range-s c64, 10k keys|range --consistency s --clients 64 --conns 8 --duration $DURATION --key-space $PRELOAD_KEYS"
  "put c1|put --clients 1 --conns 1 --duration $DURATION --val-size 256 --key-space 100000"
  "put c64|put --clients 64 --conns 8 --duration $DURATION --val-size 256 --key-space 100000"
  "put c1000|put --clients 1000 --conns 100 --duration $DURATION --val-size 256 --key-space 100000"
  "range-l c64, after puts|range --consistency l --clients 64 --conns 8 --duration $DURATION --key-space $PRELOAD_KEYS"
  "range-s c64, after puts|range --consistency s --clients 64 --conns 8 --duration $DURATION --key-space $PRELOAD_KEYS"
  "txn-put c64|txn-put --clients 64 --conns 8 --duration $DURATION --val-size 256 --key-space 100000"
  "watch 16x16 on 64 keys, 500 puts/s|watch --streams 16 --watchers-per-stream 16 --clients 8 --conns 8 --key-space 64 --rate 500 --duration $DURATION --val-size 256"
  "lease-keepalive c64|lease-keepalive --clients 64 --conns 8 --duration $DURATION"
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

# field NAME JSON: a number from the bench's one-line JSON summary (the first
# NAME in it: the run's own, not one of its parts'); sfield: a string field.
field() {
  awk -v k="\"$1\":" '{ i = index($0, k); if (i) { s = substr($0, i + length(k)); match(s, /^[-0-9.eE+]*/); print substr(s, 1, RLENGTH) } }' <<<"$2"
}
sfield() {
  awk -v k="\"$1\":\"" '{ i = index($0, k); if (i) { s = substr($0, i + length(k)); print substr(s, 1, index(s, "\"") - 1) } }' <<<"$2"
}

# bench KIND OFFSET ARGS...: runs one bench; prints its JSON line, or
# "FAIL: why" when it did not finish.
bench() {
  local kind=$1 off=$2 out rc=0 cpu0; shift 2
  cpu0=$(cluster_cpu_ms "$kind")
  local eps; eps=$(endpoints "$off")
  if [[ " $* " == *" --conns 1 "* ]]; then eps=$(leader_of "$off"); eps=${eps:-$(endpoints "$off")}; fi
  out=$(timeout "$RUN_TIMEOUT" "$CONCORD" bench --json --endpoints="$eps" "$@" 2>"$WORK/bench.err") || rc=$?
  if [ $rc -ne 0 ]; then
    local why
    if [ $rc -eq 124 ]; then why="timed out after ${RUN_TIMEOUT}s"
    else why="exit $rc: $( (grep -v '^[[:space:]]*$' "$WORK/bench.err" || true) | tail -n 1 | tr '|\t' '/ ' | cut -c1-200)"; fi
    log "$kind: bench failed ($why): $*"
    echo "FAIL: $why"
    return 0
  fi
  # Append the members' CPU time during the run (all three members together).
  out="${out%\}},\"server_cpu_ms\":$(( $(cluster_cpu_ms "$kind") - cpu0 ))}"
  local errors; errors=$(field errors "$out")
  if [ "${errors:-0}" != 0 ]; then log "$kind: $errors errors: $(sed -n 's/.*"error_kinds":\(.*\)}$/\1/p' <<<"$out" | head -c 500)"; fi
  log "$kind: $*: $(field requests_per_sec "$out") $(sfield unit "$out")/s, p99 $(field p99_ms "$out") ms, errors ${errors:-?}"
  echo "$out"
}

log "work dir $WORK ($(df -h --output=source,fstype "$WORK" | tail -n 1 | tr -s ' '))"
start_cluster etcd 0
start_cluster concord 100
wait_healthy etcd 0
wait_healthy concord 100
log "leaders: etcd $(leader_of 0), concord $(leader_of 100)"

# One line per run: label, kind, throughput/s, p99 ms, errors, server CPU us
# per successful request, unit, and why it failed (if it did).
record() { # label kind output
  local label=$1 kind=$2 out=$3 rps p99 errors cpu ok unit
  if [[ $out == FAIL:* ]]; then
    printf '%s\t%s\t\t\t\t\t\t%s\n' "$label" "$kind" "${out#FAIL: }" >>"$RESULTS"
    return
  fi
  rps=$(field requests_per_sec "$out"); p99=$(field p99_ms "$out"); errors=$(field errors "$out")
  cpu=$(field server_cpu_ms "$out"); ok=$(field ok "$out")
  unit=$(sfield unit "$out")
  if [ -n "$cpu" ] && [ -n "$ok" ] && [ "$ok" -gt 0 ]; then cpu=$((cpu * 1000 / ok)); else cpu=; fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n' "$label" "$kind" "$rps" "$p99" "${errors:-0}" "$cpu" "${unit:-requests}" >>"$RESULTS"
}

selected() { [ -z "$ONLY" ] || [[ $1 =~ $ONLY ]]; }

# The etcd-client crate drives the KV workloads only.
kv_workload() { [[ $1 != watch && $1 != lease-keepalive ]]; }

for driver in $DRIVERS; do
  RESULTS=$WORK/results-$driver.tsv
  : >"$RESULTS"
  for w in "${WORKLOADS[@]}"; do
    label=${w%%|*}; read -r -a args <<<"${w#*|}"
    selected "$label" || continue
    if [ "$driver" != h2 ] && ! kv_workload "${args[0]}"; then continue; fi
    if [ "${args[0]}" = range ] && [ -z "${PRELOADED:-}" ]; then
      read -r -a pre <<<"$PRELOAD"
      record "put preload (10k keys, c64)" etcd "$(bench etcd 0 "${pre[@]}")"
      record "put preload (10k keys, c64)" concord "$(bench concord 100 "${pre[@]}")"
      PRELOADED=1
    fi
    for ((r = 1; r <= ROUNDS; r++)); do
      record "$label" etcd "$(bench etcd 0 --client "$driver" "${args[@]}")"
      record "$label" concord "$(bench concord 100 --client "$driver" "${args[@]}")"
    done
  done
done

# rss_mib KIND FIELD: FIELD (VmRSS, VmHWM) of each member in MiB, space-separated ("-" if gone).
rss_mib() {
  local kind=$1 name=$2 i v out=""
  for i in 1 2 3; do
    v=$(awk -v f="$name:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/${PID[$kind-$i]}/status" 2>/dev/null || true)
    out+="${v:--} "
  done
  echo "${out% }"
}

echo
echo "## Concord / etcd, $(date +%F), ${ROUNDS} round(s) of ${DURATION} per workload"
echo
echo "Workloads (\`concord bench\` against all 3 members of each cluster):"
echo
for w in "${WORKLOADS[@]}"; do
  if selected "${w%%|*}"; then printf -- '- %s: `%s`\n' "${w%%|*}" "${w#*|}"; fi
done
if [ -n "${PRELOADED:-}" ]; then printf -- '- put preload: `%s`\n' "$PRELOAD"; fi
echo
echo "Throughput is per second of the run's unit (requests; events for watch;"
echo "keepalives for lease-keepalive), the mean over the rounds; so is p99."
echo "'*': some operations failed. cpu: user+system CPU of the 3 members together"
echo "during the run, per successful operation."
for driver in $DRIVERS; do
echo
case $driver in
  h2) echo "### \`concord bench\`'s own driver (gRPC over h2, frames of many requests batched per write)" ;;
  etcd-client) echo "### The etcd-client crate (\`--client etcd-client\`: one client per connection, balanced over every member)" ;;
  *) echo "### $driver" ;;
esac
echo
awk -F'\t' '
  function ratio(c, e) { return (c != "" && e != "" && e + 0 > 0) ? sprintf("%.2f", c / e) : "-" }
  function mean(sum, n) { return n > 0 ? sum / n : "" }
  {
    key = $1; if (!(key in seen)) { seen[key] = 1; order[++rows] = key }
    k = key SUBSEP $2
    if ($8 != "") { fails[k] = $8; next }
    n[k]++; rps[k] += $3; p99[k] += $4; if ($5 + 0 > 0) err[k] = 1
    if ($6 != "") { cpu[k] += $6; ncpu[k]++ }
    unit[key] = $7
  }
  END {
    print "| workload | etcd /s | Concord /s | Concord/etcd | etcd p99 ms | Concord p99 ms | Concord/etcd p99 | etcd cpu us/op | Concord cpu us/op | note |"
    print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    for (i = 1; i <= rows; i++) {
      key = order[i]; e = key SUBSEP "etcd"; c = key SUBSEP "concord"
      er = mean(rps[e], n[e]); cr = mean(rps[c], n[c]); ep = mean(p99[e], n[e]); cp = mean(p99[c], n[c])
      note = ""
      if (e in fails) note = note "etcd: " (n[e] ? "some runs " : "") "failed (" fails[e] "); "
      if (c in fails) note = note "Concord: " (n[c] ? "some runs " : "") "failed (" fails[c] "); "
      if (unit[key] != "" && unit[key] != "requests") note = note "per second: " unit[key]
      printf "| %s | %s%s | %s%s | %s | %s | %s | %s | %s | %s | %s |\n", key,
        (er == "" ? (e in fails ? "unsupported/failed" : "-") : sprintf("%.0f", er)), (err[e] ? "*" : ""),
        (cr == "" ? (c in fails ? "failed" : "-") : sprintf("%.0f", cr)), (err[c] ? "*" : ""),
        ratio(cr, er), (ep == "" ? "-" : sprintf("%.1f", ep)), (cp == "" ? "-" : sprintf("%.1f", cp)), ratio(cp, ep),
        (ncpu[e] ? sprintf("%.0f", cpu[e] / ncpu[e]) : "-"), (ncpu[c] ? sprintf("%.0f", cpu[c] / ncpu[c]) : "-"), note
    }
  }' "$WORK/results-$driver.tsv"
done

echo
echo "Memory of each member after the runs (MiB; VmRSS now, VmHWM the peak):"
echo
echo "| memory | etcd (3 members) | Concord (3 members) | etcd mean | Concord mean | Concord/etcd |"
echo "|---|---|---|---:|---:|---:|"
for what in VmRSS VmHWM; do
  e=$(rss_mib etcd $what); c=$(rss_mib concord $what)
  awk -v w="$what" -v e="$e" -v c="$c" 'BEGIN {
    ne = split(e, ev, " "); nc = split(c, cv, " "); se = 0; sc = 0; ke = 0; kc = 0
    for (i = 1; i <= ne; i++) if (ev[i] != "-") { se += ev[i]; ke++ }
    for (i = 1; i <= nc; i++) if (cv[i] != "-") { sc += cv[i]; kc++ }
    me = ke ? se / ke : 0; mc = kc ? sc / kc : 0
    printf "| %s | %s | %s | %s | %s | %s |\n", w, e, c, (ke ? sprintf("%.1f", me) : "-"), (kc ? sprintf("%.1f", mc) : "-"),
      (me > 0 && kc ? sprintf("%.2f", mc / me) : "-")
  }'
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
