#!/bin/sh
# Start tritonserver for the fsrec model repository inside the serving container.
#
# - explicit model control: only FSREC_MODEL_NAME is loaded at start; new versions are rolled out
#   through the model-control API (`fsrec rollout`), which needs the admin key;
# - restricted APIs: FSREC_RESTRICTED_APIS (model repository / control by default) need the header
#   FSREC_ADMIN_HEADER (HTTP) or triton-grpc-protocol-FSREC_ADMIN_HEADER (gRPC) with the key read
#   from FSREC_ADMIN_KEY_FILE (a mounted secret) or FSREC_ADMIN_KEY; inference, health and
#   metadata stay open. Without a key the server refuses to start unless
#   FSREC_ALLOW_UNRESTRICTED=1 (then model control is open to anyone who reaches the port);
# - Prometheus metrics on FSREC_METRICS_PORT (on by default);
# - extra arguments are passed to tritonserver as they are.
set -eu

repo="${FSREC_MODEL_REPOSITORY:-/models}"
model="${FSREC_MODEL_NAME:-fsrec}"
header="${FSREC_ADMIN_HEADER:-fsrec-admin-key}"
apis="${FSREC_RESTRICTED_APIS:-model-repository,trace,logging,shared-memory}"

key="${FSREC_ADMIN_KEY:-}"
if [ -z "$key" ] && [ -n "${FSREC_ADMIN_KEY_FILE:-}" ] && [ -r "${FSREC_ADMIN_KEY_FILE}" ]; then
  key="$(tr -d '\r\n' < "${FSREC_ADMIN_KEY_FILE}")"
fi

if [ ! -f "$repo/$model/config.pbtxt" ]; then
  echo "fsrec-entrypoint: $repo/$model/config.pbtxt is missing: build the image with a model" \
       "repository (--build-arg MODEL_REPOSITORY=...) or mount one at $repo" >&2
  exit 2
fi

set -- \
  --model-repository="$repo" \
  --model-control-mode=explicit \
  --load-model="$model" \
  --strict-readiness=true \
  --exit-on-error=true \
  --http-port="${FSREC_HTTP_PORT:-8000}" \
  --grpc-port="${FSREC_GRPC_PORT:-8001}" \
  --allow-metrics=true \
  --allow-gpu-metrics=true \
  --metrics-port="${FSREC_METRICS_PORT:-8002}" \
  "$@"

if [ -n "$key" ]; then
  set -- "$@" \
    --http-restricted-api="$apis:$header=$key" \
    --grpc-restricted-protocol="$apis:$header=$key"
elif [ "${FSREC_ALLOW_UNRESTRICTED:-0}" != "1" ]; then
  echo "fsrec-entrypoint: no admin key: mount the secret at ${FSREC_ADMIN_KEY_FILE:-<unset>} or set" \
       "FSREC_ADMIN_KEY; set FSREC_ALLOW_UNRESTRICTED=1 only on a private network" >&2
  exit 2
fi

exec tritonserver "$@"
