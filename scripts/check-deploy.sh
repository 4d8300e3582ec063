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
echo "deploy files ok"
