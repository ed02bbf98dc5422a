#!/usr/bin/env bash
# The main job: trains on the digits data shipped in the repo, checkpoints, resumes and
# reloads the best checkpoint. Installs libtorch first when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo run --release --locked --example digits -- demo "$@"
