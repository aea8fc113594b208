#!/usr/bin/env bash
# The whole test suite: installs what is missing, checks formatting and
# lints, then runs unit, integration and end-to-end tests against real
# etcd, containerd and a registry (root is needed for containers).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
