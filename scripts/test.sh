#!/usr/bin/env bash
# The project's single test command: prepares the host, then runs pytest with the given args.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-host.sh
exec .venv/bin/python -m pytest "$@"
