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
# - Prometheus metrics on FSREC_METRICS_PORT (on by default), with latency summaries (p50..p99 of
#   request, queue and compute time: the flags of fsrec_serve.serving.flags.metrics_config_args);
# - the front models FSREC_FRONT_MODELS (fsrec_user, fsrec_events: by user id / event intake) are
#   loaded too when the repository has them; they need the shared store FSREC_STORE (redis://...,
#   the learner's too; tritonserver passes its environment to the python stubs) and the shared
#   user-id key FSREC_USER_KEY_FILE (mode 0600 / 0400, the same file on every replica and learner).
#   Without them the server refuses to start: a per-container store or key would lose every
#   user's state on restart. FSREC_FRONT_MODELS= (empty) serves the ranker alone;
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

front=""
for m in $(echo "${FSREC_FRONT_MODELS-fsrec_user,fsrec_events}" | tr ',' ' '); do
  if [ -f "$repo/$m/config.pbtxt" ]; then
    front="$front $m"
  fi
done
if [ -n "$front" ]; then
  if [ -z "${FSREC_STORE:-}" ]; then
    echo "fsrec-entrypoint: the front models ($front ) need FSREC_STORE: the store shared with the learner" \
         "(redis://host:6379/0); set FSREC_FRONT_MODELS= to serve the ranker alone" >&2
    exit 2
  fi
  ukey="${FSREC_USER_KEY_FILE:-}"
  if [ -z "$ukey" ] || [ ! -r "$ukey" ]; then
    echo "fsrec-entrypoint: the front models need the user-id key: mount the secret shared with the learner" \
         "at ${ukey:-<FSREC_USER_KEY_FILE unset>} (readable by uid $(id -u))" >&2
    exit 2
  fi
  case "$(stat -c %a "$ukey")" in
    [0-7]00) ;;
    *)
      echo "fsrec-entrypoint: user-id key $ukey is readable by other users (mode $(stat -c %a "$ukey")):" \
           "chmod 600 it, owned by uid $(id -u)" >&2
      exit 2
      ;;
  esac
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
  --metrics-config=summary_latencies=true \
  --metrics-config=summary_quantiles=0.5:0.05,0.9:0.01,0.95:0.005,0.99:0.001 \
  "$@"
for m in $front; do
  set -- "$@" --load-model="$m"
done

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
