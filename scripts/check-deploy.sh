#!/usr/bin/env bash
# Validates what cannot run here: Prometheus rules (promtool) and compose.yaml (docker-compose).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -f deploy/prometheus/alerts.yml ]; then
  # The scrape configuration too, with the rule files it names.
  promtool check config deploy/prometheus/prometheus.yml
  promtool check rules deploy/prometheus/alerts.yml
  promtool test rules deploy/prometheus/alerts.test.yml
fi
# The database images' start-up scripts run only under Docker: at least they must parse.
for script in deploy/postgres/*.sh; do
  bash -n "$script"
done
if [ -f compose.yaml ]; then
  docker-compose -f compose.yaml config --quiet
fi
# No Docker engine here to build with, and no hadolint in Debian: check the service image's shape.
for dockerfile in Dockerfile deploy/postgres/Dockerfile; do
  grep -q '^FROM ' "$dockerfile" || { echo "$dockerfile: no FROM"; exit 1; }
  if grep -E '^FROM ' "$dockerfile" | grep -vqE '^FROM [^ ]+:[^ ]+'; then echo "$dockerfile: every FROM needs a pinned tag"; exit 1; fi
  if grep -qE '^FROM [^ ]+:latest' "$dockerfile"; then echo "$dockerfile: do not build FROM :latest"; exit 1; fi
done
grep -qE '^USER [^r]' Dockerfile || { echo "Dockerfile: the service must run as a non-root USER"; exit 1; }
grep -q '^HEALTHCHECK' Dockerfile || { echo "Dockerfile: HEALTHCHECK missing"; exit 1; }
grep -q 'npm ci --omit=dev' Dockerfile || { echo "Dockerfile: install with npm ci --omit=dev"; exit 1; }
[ "$(grep -c '^FROM ' Dockerfile)" -ge 2 ] || { echo "Dockerfile: build in stages (deps, then runtime)"; exit 1; }
grep -q '^COPY --from=' Dockerfile || { echo "Dockerfile: the runtime stage copies from the deps stage"; exit 1; }
# What the image runs must work with production dependencies only: install them as the deps
# stage does, into a scratch copy of what `COPY . .` brings, and run the CLI from there.
image_root="$(mktemp -d)"
trap 'rm -rf "$image_root"' EXIT
cp package.json package-lock.json tsconfig.json "$image_root"/
cp -r src bin scripts migrations "$image_root"/
(cd "$image_root" && npm ci --omit=dev --no-audit --no-fund --loglevel=error >/dev/null)
if [ -d "$image_root/node_modules/typescript" ]; then echo "Dockerfile: --omit=dev still installed TypeScript"; exit 1; fi
(cd "$image_root" && npm run build --silent >/dev/null && node bin/outpost.js --help >/dev/null) \
  || { echo "Dockerfile: the CLI does not start with production dependencies only"; exit 1; }
echo "deploy files ok"
