#!/usr/bin/env bash
# A real-browser check of the threshold slider in notebook 04 (not part of `make test`: it needs a
# browser). Prerequisites: `make reproduce` (the notebook reads runs/synthetic), a Chromium
# (Debian: apt-get install chromium), node with playwright-core (npm i playwright-core in tools/).
# Screenshots go to $SHOTS (default /tmp). The notebooks on disk are left unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8899} TOKEN=${TOKEN:-camseg-check}
.venv/bin/jupyter lab --no-browser --port "$PORT" --IdentityProvider.token="$TOKEN" \
  --ServerApp.root_dir="$PWD/notebooks" --ServerApp.port_retries=0 --allow-root > /tmp/camseg_jupyterlab.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; git checkout -- notebooks 2>/dev/null || true' EXIT
for _ in $(seq 60); do  # wait for the server to answer
  curl -sf "http://127.0.0.1:$PORT/api/status?token=$TOKEN" >/dev/null && break
  sleep 2
done
PORT=$PORT TOKEN=$TOKEN SHOTS=${SHOTS:-/tmp} NODE_PATH=${NODE_PATH:-tools/node_modules} node tools/jupyterlab_slider_check.js
