#!/usr/bin/env bash
# Builds and runs templates/lightning-app from a clean copy outside the workspace, exactly as a
# user's crate: no .cargo/config.toml of ours applies, libtorch comes from LIBTORCH (set here
# to the .libtorch link scripts/setup.sh makes, unless already set), and its build.rs's one
# call to lightning-build is all that makes the binary find libtorch at run time (no
# LD_LIBRARY_PATH). It shares the workspace's target directory so dependencies are reused.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LIBTORCH="${LIBTORCH:-$root/.libtorch}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
unset LD_LIBRARY_PATH
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp -r "$root/templates/lightning-app" "$tmp/"
app="$tmp/lightning-app"
# The template's paths are relative to templates/lightning-app; point them at this checkout.
sed -i "s#\"\.\./\.\./#\"$root/#g" "$app/Cargo.toml"
# The workspace's lock file pins the same versions, so nothing new is resolved or fetched.
cp "$root/Cargo.lock" "$app/Cargo.lock"
cd "$app"
cargo build --quiet
# Run the binary itself (not `cargo run`, which could add libtorch to the loader's path).
"$CARGO_TARGET_DIR/debug/lightning-app" act=GELU optim.lr=0.01
