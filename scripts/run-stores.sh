#!/usr/bin/env bash
# Starts every store node of a topology in the foreground; Ctrl-C stops them all.
set -euo pipefail
topology=${1:-topology/two-site.toml}
mkdir -p var/logs
pids=()
for node in $(grep -A2 '^\[\[node\]\]' "$topology" | sed -n 's/^name = "\(.*\)"/\1/p'); do
  target/debug/fabric-store --topology "$topology" --node "$node" --data-dir "var/nodes/$node" >>"var/logs/$node.log" 2>&1 &
  pids+=($!)
  echo "started $node (pid $!), log var/logs/$node.log"
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null; wait' INT TERM
wait
