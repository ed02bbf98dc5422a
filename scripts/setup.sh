#!/usr/bin/env bash
# Installs what the project needs and skips what is already there:
#   - a Python venv with torch==2.11.0 (libtorch for tch 0.24) and lightning (interop tests),
#     kept in a per-user cache keyed by the versions and linked into the repo as .venv;
#   - .libtorch -> the venv's torch package (include/ + lib/), read by .cargo/config.toml.
set -euo pipefail
TORCH_VERSION=2.11.0
LIGHTNING_VERSION=2.6.6
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${LIGHTNING_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lightning-rs}"
venv="$cache/torch-$TORCH_VERSION"
stamp="$venv/.lightning-rs-ready-$TORCH_VERSION-$LIGHTNING_VERSION"
py="${PYTHON:-python3}"

if [ ! -f "$stamp" ]; then
  echo "setup: installing torch==$TORCH_VERSION and lightning==$LIGHTNING_VERSION into $venv (first run: a few minutes, ~5 GB)"
  mkdir -p "$cache"
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "torch==$TORCH_VERSION" "lightning==$LIGHTNING_VERSION" numpy pyyaml
  touch "$stamp"
else
  echo "setup: torch $TORCH_VERSION venv already present at $venv"
fi

ln -sfn "$venv" "$root/.venv"
torch_dir="$("$venv/bin/python" - <<'PY'
import importlib.util, os
print(os.path.dirname(importlib.util.find_spec("torch").origin))
PY
)"
ln -sfn "$torch_dir" "$root/.libtorch"
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found on PATH; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
