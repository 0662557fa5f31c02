#!/usr/bin/env bash
# Debian packages the integration tests use: Prometheus and its Pushgateway (scraping the exporter),
# Chromium (rendering the HTML reports headless) and tmux (the live dashboard in a real terminal).
# Idempotent; needs root (CI runs as root).
set -euo pipefail
need=()
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v prometheus-pushgateway >/dev/null 2>&1 || need+=(prometheus-pushgateway)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v tmux >/dev/null 2>&1 || need+=(tmux)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup-system: need root to apt-get install ${need[*]}; the tests that use them will fail" >&2
  exit 1
fi
echo "setup-system: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian packages start services on install where an init system runs; loadgen's tests start their
# own instances on free ports, so stop any that came up (ignore failures: there may be no init system).
for svc in prometheus prometheus-pushgateway prometheus-node-exporter; do
  (service "$svc" stop >/dev/null 2>&1 || true)
done
