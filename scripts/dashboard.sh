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
