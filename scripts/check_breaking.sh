#!/usr/bin/env bash
# Fails when the protos break what an earlier commit's protos promised (buf breaking, the rules in buf.yaml).
# Usage: check_breaking.sh [COMMIT]   (default: HEAD~1, the previous commit; the first parent of a merge)
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-tools/node_modules/.bin/buf}
base=${1:-HEAD~1}
if ! sha=$(git rev-parse --verify --quiet "$base^{commit}"); then
  echo "protos breaking: no commit $base to compare with (the first commit, or a shallow clone): skipped"
  exit 0
fi
# Before buf.yaml the module root was the repository root, so every file would read as deleted: nothing to compare.
if ! git cat-file -e "$sha:buf.yaml" 2>/dev/null; then
  echo "protos breaking: $base has no buf.yaml (no buf module yet): skipped"
  exit 0
fi
"$BUF" breaking --against ".git#ref=$sha"
echo "protos breaking: nothing breaks what $base's protos promised"
