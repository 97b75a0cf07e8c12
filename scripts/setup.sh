#!/usr/bin/env bash
# Installs what building and testing Concord needs on Debian: protoc for the
# .proto files, etcdctl (etcd-client) for the tests, etcd itself (etcd-server)
# for side-by-side benchmarks, iproute2 (`ip`, `tc`) for the chaos rig's
# network namespaces, chromium with chromium-driver (headless, through
# WebDriver) for the dashboard's end-to-end test, patroni with postgresql
# (its server binaries live under /usr/lib/postgresql/*/bin, off the PATH) for
# the test of Patroni on Concord, and dnsmasq-base (the binary alone, no system
# service) with curl for the tests of discovery (SRV records in a network
# namespace; etcd's v2 keys API). Needs root or sudo.
set -euo pipefail

missing=()
command -v protoc >/dev/null || missing+=(protobuf-compiler)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v ip >/dev/null || missing+=(iproute2)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v patroni >/dev/null || missing+=(patroni)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
[ -x /usr/sbin/dnsmasq ] || command -v dnsmasq >/dev/null || missing+=(dnsmasq-base)
command -v curl >/dev/null || missing+=(curl)
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }

if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
