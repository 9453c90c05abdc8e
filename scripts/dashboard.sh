#!/usr/bin/env bash
# Prepares and checks the web dashboard: installs its exact dependencies and Chromium (for the
# browser tests, which run inside `cargo test`), lints it (TypeScript, hooks and jsx-a11y's
# strict accessibility rules), runs its Vitest tests, rebuilds it and checks
# that the committed build in web-dashboard/dist (which the binary embeds) is up to date.
set -euo pipefail
cd "$(dirname "$0")/../web-dashboard"

if ! command -v chromium >/dev/null 2>&1; then
  echo "installing chromium (browser tests)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
npm ci --no-audit --no-fund --loglevel=error
npm run lint --silent
npx vitest run
npm run build --silent
if ! git diff --quiet -- dist || [ -n "$(git ls-files --others --exclude-standard -- dist)" ]; then
  echo "web-dashboard/dist is out of date with its sources: run 'npm run build' in web-dashboard and commit dist" >&2
  git status --short -- dist >&2
  exit 1
fi

# The viewer client package (clients/typescript), which the dashboard builds from its sources:
# its tests, its build (ESM and declarations in dist/, which tests/typescript_client.rs runs
# from Node), and its REST types regenerated from openapi.json must match what is committed.
cd ../clients/typescript
npm ci --no-audit --no-fund --loglevel=error
npx tsc --noEmit -p tsconfig.json
npx vitest run
npm run build --silent
if ! git diff --quiet -- src/generated; then
  echo "clients/typescript/src/generated is out of date with openapi.json: run 'npm run build' in clients/typescript and commit it" >&2
  exit 1
fi
