#!/usr/bin/env bash
# Make a `prometheus` server binary available for the metrics tests, and print its path.
#
# Idempotent: when `prometheus` is already on PATH (or PROMETHEUS_BIN names one) nothing is
# installed. Otherwise Debian's `prometheus` package is installed with apt-get, which needs root;
# the tests only need the server binary, so the package's systemd service is left alone (it is
# not started in containers or CI, where there is no systemd).
set -euo pipefail

if [ -n "${PROMETHEUS_BIN:-}" ] && [ -x "$PROMETHEUS_BIN" ]; then
    echo "$PROMETHEUS_BIN"
    exit 0
fi
if found=$(command -v prometheus); then
    echo "$found"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "scripts/prometheus.sh: no prometheus binary and no apt-get: install Prometheus and put it on PATH" >&2
    echo "  (or set PROMETHEUS_BIN); the Prometheus tests skip without it" >&2
    exit 1
fi
if [ "$(id -u)" != 0 ]; then
    echo "scripts/prometheus.sh: installing Debian's prometheus package needs root: run 'sudo $0'" >&2
    exit 1
fi
echo "scripts/prometheus.sh: installing Debian's prometheus package" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
# --no-install-recommends: the server is all the tests need (not node-exporter, not the web assets).
apt-get install -y -qq --no-install-recommends prometheus >&2
command -v prometheus
