#!/usr/bin/env bash
# Join this node to a running Ray head. Extra arguments go to `ray start`,
# e.g. --resources='{"rollout_node": 1}' to pin a role here (rollout.resources).
#   launch/cluster/ray_worker.sh HEAD_IP:PORT [ray start args...]
# With token authentication (the default) the node needs the head's token: a
# shared home holds it in ~/.ray/auth_token; else export RAY_AUTH_TOKEN.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 HEAD_IP:PORT [ray start args...]" >&2
  exit 2
fi
head=$1
shift
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [ "$RAY_AUTH_MODE" = token ] && [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]; then
  echo "gradus: no Ray auth token here: copy the head's ~/.ray/auth_token to this node or export RAY_AUTH_TOKEN=\$(ssh HEAD ray get-auth-token)" >&2
  exit 2
fi
ip=${GRADUS_NODE_IP:-$(python -c "import ray.util; print(ray.util.get_node_ip_address())")}
ray start --address="$head" --node-ip-address="$ip" --disable-usage-stats "$@"
