#!/usr/bin/env bash
# Start the Ray head on this node; prints the address workers and `gradus train
# cluster.address=...` use. Extra arguments go to `ray start` (e.g. --num-gpus=8).
#   launch/cluster/ray_head.sh [--port=6379] [ray start args...]
set -euo pipefail
port=6379
args=()
for a in "$@"; do
  case "$a" in --port=*) port=${a#--port=} ;; *) args+=("$a") ;; esac
done
ip=${GRADUS_NODE_IP:-$(python -c "import ray.util; print(ray.util.get_node_ip_address())")}
ray start --head --node-ip-address="$ip" --port="$port" --dashboard-host=0.0.0.0 --disable-usage-stats "${args[@]}"
echo "gradus: Ray head at $ip:$port (jobs: http://$ip:8265)"
