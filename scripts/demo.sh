#!/usr/bin/env bash
# The all-in-one demo: installs what is missing, builds commitd, starts a
# local registry with the demo images, and runs `commitd up` on a Git
# repository created from examples/manifests.
set -euo pipefail
cd "$(dirname "$0")/.."

state=${COMMITD_STATE_DIR:-/var/lib/commitd}
repo=${COMMITD_REPO:-$state/repo}

bash scripts/install-deps.sh
cargo build --release --bin commitd
bash scripts/registry.sh
bash examples/images/build.sh 127.0.0.1:5000
install -m 0755 target/release/commitd /usr/local/bin/commitd
echo "commitd installed in /usr/local/bin"
exec commitd up --repo "$repo" --init-from examples/manifests --state-dir "$state"
