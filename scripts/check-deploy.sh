#!/usr/bin/env bash
# Validates what cannot run here: Prometheus rules (promtool) and compose.yaml (docker-compose).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f deploy/prometheus/alerts.yml ]; then
  promtool check rules deploy/prometheus/alerts.yml
  promtool test rules deploy/prometheus/alerts.test.yml
fi
if [ -f compose.yaml ]; then
  docker-compose -f compose.yaml config --quiet
fi
# No Docker engine here to build with, and no hadolint in Debian: check the service image's shape.
for dockerfile in Dockerfile deploy/postgres/Dockerfile; do
  grep -qE '^FROM [^ ]+:[^ ]+' "$dockerfile" || { echo "$dockerfile: every FROM needs a pinned tag"; exit 1; }
  if grep -qE '^FROM [^ ]+:latest' "$dockerfile"; then echo "$dockerfile: do not build FROM :latest"; exit 1; fi
done
grep -qE '^USER [^r]' Dockerfile || { echo "Dockerfile: the service must run as a non-root USER"; exit 1; }
grep -q '^HEALTHCHECK' Dockerfile || { echo "Dockerfile: HEALTHCHECK missing"; exit 1; }
grep -q 'npm ci' Dockerfile || { echo "Dockerfile: install with npm ci"; exit 1; }
echo "deploy files ok"
