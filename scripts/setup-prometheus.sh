#!/usr/bin/env bash
# Debian's Prometheus server and Pushgateway, for tests/test_prometheus_server.py (marker "prometheus").
# Idempotent: does nothing when both binaries are present; otherwise one quiet `apt-get update` and
# install. Needs root (CI runs as root). The tests start their own instances on free 127.0.0.1 ports.
set -euo pipefail
need=()
[ -x /usr/bin/prometheus ] || need+=(prometheus)
[ -x /usr/bin/prometheus-pushgateway ] || need+=(prometheus-pushgateway)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-prometheus: need root to apt-get install ${need[*]}; tests marked 'prometheus' will skip" >&2
  exit 1
fi
echo "setup-prometheus: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Where an init system runs, the packages start system services on :9090/:9091; the tests do not use
# them, so stop them (ignore failures: containers usually have no init system).
for svc in prometheus prometheus-pushgateway prometheus-node-exporter; do
  (service "$svc" stop >/dev/null 2>&1 || true)
done
