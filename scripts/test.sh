#!/usr/bin/env bash
# Set up everything the tests need, then lint, type-check and run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
scripts/pg-ensure.sh
echo "== ruff"; .venv/bin/ruff check .
echo "== mypy"; .venv/bin/mypy gateway drivers rules uplink central simulators northbound tests bench scripts
echo "== pytest"; .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
