#!/usr/bin/env bash
# The project's single test command: prepares the host, then runs pytest with the given args.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup-host.sh
# The real Grafana Mimir the tests push into (tests/mimir.py): the tool kept beside the checkout,
# unless MIMIR_BIN names one already. Without it those tests are skipped and say how to get one.
mimir_tool=../shared/tools/mimir/mimir-bin
if [[ -z "${MIMIR_BIN:-}" && -f $mimir_tool ]]; then
    MIMIR_BIN=$(bash "$mimir_tool")
    export MIMIR_BIN
fi
exec .venv/bin/python -m pytest "$@"
