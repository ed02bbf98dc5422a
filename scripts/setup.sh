#!/usr/bin/env bash
# Installs what the project needs and skips what is already there:
#   - a Python venv with torch==2.11.0 (libtorch for tch 0.24) and lightning (interop tests),
#     kept in a per-user cache keyed by the versions and linked into the repo as .venv;
#   - moto[server] (a local S3 API server for the object-storage tests), s3fs (the Python side
#     of the object-storage bench) and tensorboard (reads our event files in the logger test);
#   - CUDA's crt and cccl headers (what `cuda-toolkit[crt,cccl]==13.0.2` pins, ~19 MB), which
#     lightning-dist needs to compile its NCCL part against c10d's ProcessGroupNCCL.hpp;
#   - .libtorch -> the venv's torch package (include/ + lib/), read by .cargo/config.toml.
set -euo pipefail
TORCH_VERSION=2.11.0
LIGHTNING_VERSION=2.6.6
CUDA_CRT_VERSION=13.0.88
CUDA_CCCL_VERSION=13.0.85
MOTO_VERSION=5.2.5
TENSORBOARD_VERSION=2.21.0
S3FS_VERSION=2026.9.0
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${LIGHTNING_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lightning-rs}"
venv="$cache/torch-$TORCH_VERSION"
stamp="$venv/.lightning-rs-ready-$TORCH_VERSION-$LIGHTNING_VERSION-crt$CUDA_CRT_VERSION-cccl$CUDA_CCCL_VERSION-moto$MOTO_VERSION-tb$TENSORBOARD_VERSION-s3fs$S3FS_VERSION"
py="${PYTHON:-python3}"

if [ ! -f "$stamp" ]; then
  echo "setup: installing torch==$TORCH_VERSION, lightning==$LIGHTNING_VERSION, CUDA headers, moto, s3fs and tensorboard into $venv (first run: a few minutes, ~5 GB)"
  mkdir -p "$cache"
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "torch==$TORCH_VERSION" "lightning==$LIGHTNING_VERSION" numpy pyyaml \
    "nvidia-cuda-crt==$CUDA_CRT_VERSION" "nvidia-cuda-cccl==$CUDA_CCCL_VERSION" \
    "moto[server]==$MOTO_VERSION" "tensorboard==$TENSORBOARD_VERSION" "s3fs==$S3FS_VERSION"
  touch "$stamp"
else
  echo "setup: torch $TORCH_VERSION venv (with CUDA headers) already present at $venv"
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
