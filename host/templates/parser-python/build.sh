#!/usr/bin/env sh
# Builds {{crate_file}}.wasm: a virtual environment with componentize-py (once), then the
# component. `--stub-wasi` leaves out WASI, which rapid-host does not offer to plugins.
# COMPONENTIZE_PY names an installed componentize-py to use instead of the local one.
set -eu
cd "$(dirname "$0")"
tool="${COMPONENTIZE_PY:-}"
if [ -z "$tool" ]; then
  if [ ! -x .venv/bin/componentize-py ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
  fi
  tool=.venv/bin/componentize-py
fi
"$tool" -d wit -w output-parser-plugin componentize --stub-wasi app -o {{crate_file}}.wasm
