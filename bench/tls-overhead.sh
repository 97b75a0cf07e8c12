#!/usr/bin/env bash
# Put throughput of a 3-member Concord cluster with and without TLS (client and peer links, both
# with client certificate authentication), alternating runs, same `concord bench` load.
#
#   cargo build --release -p concord && bench/tls-overhead.sh
#
# ROUNDS (default 2) runs of each; DURATION (default 10s) per run. Certificates are made with
# openssl in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-$PWD/target/release/concord}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-10s}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

cat > "$WORK/ext.cnf" <<'CNF'
subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth,clientAuth
CNF
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/ca-key.pem"
openssl req -x509 -new -key "$WORK/ca-key.pem" -subj "/CN=bench CA" -days 2 -out "$WORK/ca.pem" 2>/dev/null
for n in member client; do
  openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/$n-key.pem"
  openssl req -new -key "$WORK/$n-key.pem" -subj "/CN=$n" -out "$WORK/$n.csr" 2>/dev/null
  openssl x509 -req -in "$WORK/$n.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca-key.pem" -CAcreateserial \
    -days 2 -extfile "$WORK/ext.cnf" -out "$WORK/$n.pem" 2>/dev/null
done

# run MODE: starts 3 members (plain or tls), loads them, stops them, prints "MODE req/s p99".
run() {
  local mode=$1 scheme=http data="$WORK/$1-data"
  local member_tls=() client_tls=()
  if [ "$mode" = tls ]; then
    scheme=https
    member_tls=(--cert-file "$WORK/member.pem" --key-file "$WORK/member-key.pem" --trusted-ca-file "$WORK/ca.pem"
      --client-cert-auth --peer-cert-file "$WORK/member.pem" --peer-key-file "$WORK/member-key.pem"
      --peer-trusted-ca-file "$WORK/ca.pem" --peer-client-cert-auth)
    client_tls=(--cacert "$WORK/ca.pem" --cert "$WORK/client.pem" --key "$WORK/client-key.pem")
  fi
  rm -rf "$data"; mkdir -p "$data"
  local cluster="m0=$scheme://127.0.0.1:32380,m1=$scheme://127.0.0.1:32381,m2=$scheme://127.0.0.1:32382"
  local pids=()
  for i in 0 1 2; do
    "$BIN" serve --name "m$i" --data-dir "$data/m$i" \
      --listen-client-urls "$scheme://127.0.0.1:3237$i" --advertise-client-urls "$scheme://127.0.0.1:3237$i" \
      --listen-peer-urls "$scheme://127.0.0.1:3238$i" --initial-advertise-peer-urls "$scheme://127.0.0.1:3238$i" \
      --initial-cluster "$cluster" "${member_tls[@]}" > "$data/m$i.log" 2>&1 &
    pids+=($!)
  done
  # The bench's own connection retries cover the election; give the members a moment to listen.
  sleep 4
  "$BIN" bench put "${client_tls[@]}" --endpoints 127.0.0.1:32370,127.0.0.1:32371,127.0.0.1:32372 \
    --clients 64 --conns 8 --duration "$DURATION" --val-size 256 --key-space 100000 --json 2>/dev/null \
    | tail -1 > "$data/result.json"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(sys.argv[2], round(d['requests_per_sec']), d['p99_ms'], d['errors'])" \
    "$data/result.json" "$mode"
}

echo "mode req/s p99_ms errors"
for _ in $(seq "$ROUNDS"); do run tls; run plain; done
