#!/usr/bin/env bash
# Starts a local image registry on 127.0.0.1:5000 unless one answers there.
set -euo pipefail

addr=127.0.0.1:5000
if curl -fsS "http://$addr/v2/" >/dev/null 2>&1; then
  echo "registry already answers on $addr"
  exit 0
fi
dir=/var/lib/commitd-registry
mkdir -p "$dir/data"
cat > "$dir/config.yml" <<YAML
version: 0.1
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $addr
YAML
nohup docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &
for _ in $(seq 1 100); do
  curl -fsS "http://$addr/v2/" >/dev/null 2>&1 && { echo "registry started on $addr (log: $dir/registry.log)"; exit 0; }
  sleep 0.1
done
echo "error: the registry did not start; see $dir/registry.log" >&2
exit 1
