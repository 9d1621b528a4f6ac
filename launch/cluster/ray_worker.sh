#!/usr/bin/env bash
# Join this node to a running Ray head. Extra arguments go to `ray start`,
# e.g. --resources='{"rollout_node": 1}' to pin a role here (rollout.resources).
#   launch/cluster/ray_worker.sh HEAD_IP:PORT [ray start args...]
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 HEAD_IP:PORT [ray start args...]" >&2
  exit 2
fi
head=$1
shift
ip=${GRADUS_NODE_IP:-$(python -c "import ray.util; print(ray.util.get_node_ip_address())")}
ray start --address="$head" --node-ip-address="$ip" --disable-usage-stats "$@"
