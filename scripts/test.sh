#!/usr/bin/env bash
# The README's test command: installs what the tests start when it is missing (Debian's chromium, nginx-light,
# redis-server and postgresql; with sudo when not root), then runs the whole suite. Arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/test-deps.sh
exec cargo test --locked "$@"
