#!/usr/bin/env bash
# Runs every check and test of the workspace; installs libtorch first when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
# Tests that compare with Python fail, instead of skipping, when the venv's Python is missing.
export LIGHTNING_RS_REQUIRE_PYTHON=1
# The C++ shims (torch-sys's, lightning-sys's, lightning-dist's) are compiled by several of the
# builds below with the same input: compile each once (scripts/cxx-cache.sh).
export LIGHTNING_RS_REAL_CXX="${CXX:-c++}"
export LIGHTNING_RS_CXX_CACHE="$PWD/target/cxx-cache"
export CXX="$PWD/scripts/cxx-cache.sh"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --test ui --locked -- -D warnings
# lightning-core without its optional subsystems (distributed, object-storage): it builds,
# lints clean and passes its unit tests and doctests (rebuilds lightning-core only).
cargo clippy -p lightning-core --no-default-features --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked --no-run
# The example binaries tests/trainer/digits_resume.rs runs (`cargo test --all-targets` builds
# examples only as test harnesses).
cargo build --example digits --locked
# The macros' trybuild cases (`test = false`: not part of --all-targets) build their binary
# here, then check their cases in trybuild's own target directory beside the other tests.
cargo test -p lightning-macros --test ui --locked --no-run
ui_log="$(mktemp)"
trap 'rm -f "$ui_log"' EXIT
cargo test -p lightning-macros --test ui --locked >"$ui_log" 2>&1 &
ui_pid=$!
tests_ok=0
cargo test --workspace --all-targets --locked || tests_ok=$?
ui_ok=0
wait "$ui_pid" || ui_ok=$?
cat "$ui_log"
if [ "$tests_ok" -ne 0 ] || [ "$ui_ok" -ne 0 ]; then
  echo "test.sh: workspace tests exit $tests_ok, trybuild cases exit $ui_ok" >&2
  exit 1
fi
cargo test -p lightning-core --no-default-features --locked
cargo test --workspace --doc --locked
# A user's crate outside the workspace builds and starts (libtorch found through lightning-build).
scripts/template.sh
