#!/usr/bin/env bash
# Start the Ray head on this node; prints the address workers and `gradus train
# cluster.address=...` use. Extra arguments go to `ray start` (e.g. --num-gpus=8).
#   launch/cluster/ray_head.sh [--port=6379] [--dashboard-host=127.0.0.1] [ray start args...]
# The dashboard's job API runs any code it is sent, so it listens on 127.0.0.1
# only: reach it through `ssh -L 8265:localhost:8265 HEAD`. --dashboard-host=IP
# (or GRADUS_DASHBOARD_HOST) widens the bind, for networks you control.
# Token authentication stays on: the head's token (~/.ray/auth_token, made here
# if missing) must reach every node and `gradus submit` (docs/reference/cluster.md).
set -euo pipefail
port=6379
dashboard_host=${GRADUS_DASHBOARD_HOST:-127.0.0.1}
args=()
for a in "$@"; do
  case "$a" in
    --port=*) port=${a#--port=} ;;
    --dashboard-host=*) dashboard_host=${a#--dashboard-host=} ;;
    *) args+=("$a") ;;
  esac
done
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [ "$RAY_AUTH_MODE" = token ]; then
  ray get-auth-token --generate >/dev/null 2>&1  # `ray start` enables token auth only if a token exists
  token_file=${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}
  [ -f "$token_file" ] && chmod 600 "$token_file"  # whoever reads it can run code on the cluster
fi
ip=${GRADUS_NODE_IP:-$(python -c "import ray.util; print(ray.util.get_node_ip_address())")}
ray start --head --node-ip-address="$ip" --port="$port" --dashboard-host="$dashboard_host" --disable-usage-stats "${args[@]}"
echo "gradus: Ray head at $ip:$port (auth: $RAY_AUTH_MODE); job API on $dashboard_host:8265"
if [ "$dashboard_host" = 127.0.0.1 ]; then
  echo "gradus: from your machine: ssh -L 8265:localhost:8265 $(hostname), then gradus submit ... --address http://127.0.0.1:8265"
fi
