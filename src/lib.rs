//! Support shared by the workspace's examples and integration tests (not a public API):
//! finding the project's Python (the venv scripts/setup.sh creates) to compare with PyTorch,
//! running the tests' child processes (`src/bin/test-child`) under a time limit, and the
//! digits data shipped in `data/` (`digits`), and a local S3 API server (`moto`).

mod child;
pub mod digits;
pub mod moto;
mod python;

pub use child::Supervised;
pub use python::{python, run_python, run_python_within, skip_or_fail, PYTHON_ENV, REQUIRE_ENV};
