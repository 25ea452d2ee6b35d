#!/usr/bin/env bash
# End-to-end test on a local kind cluster (`make kind-test`):
#   cluster (kind/kind-config.yaml) -> images built by `make images` (the container tier's
#   build: same Dockerfiles, bases and tags, mlplatform/<name>:<project version>) and loaded ->
#   chart installed with helm/mlplatform/values-kind.yaml -> warehouse seeded ->
#   `ml_model_training` unpaused and triggered through the Airflow REST API -> run polled to the
#   end -> MLflow must have a `champion` alias for the registered model.
#
# Needs: docker, kind, kubectl, helm (3.19+), curl, python3, make. The official Airflow chart
# comes from `make chart-deps` (an archive beside the repository) or `helm dependency build`.
# Environment:
#   KEEP_CLUSTER=1        keep the cluster afterwards (default: delete it, even on failure)
#   CLUSTER_NAME          kind cluster name (default mlplatform)
#   KIND_NODE_IMAGE       node image, e.g. kindest/node:v1.35.0 (default: the kind release's own)
#   SKIP_BUILD=1          load the images `make images` built before instead of building them
#   AIRFLOW_USER / AIRFLOW_PASSWORD   API credentials (default: admin and the generated password
#                         in the Secret mlplatform-airflow-admin)
#   SEED_ARGS             extra arguments of `python -m features seed`
#   RUN_TIMEOUT_S         how long to wait for the DAG run (default 3600)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER_NAME="${CLUSTER_NAME:-mlplatform}"
NAMESPACE="mlplatform"        # values-kind.yaml and kind/dags-volume.yaml assume these two
RELEASE="mlplatform"
CHART="${REPO_ROOT}/helm/mlplatform"
KIND_VALUES="${CHART}/values-kind.yaml"
DAG_ID="ml_model_training"
MODEL_NAME="customer-churn"   # pipeline.registeredModelName (values.yaml)
# The project version: `make images` tags with it and the chart's appVersion (empty image tags in
# values-kind.yaml) is it.
IMAGE_TAG="$(sed -n 's/^version = "\(.*\)"/\1/p' "${REPO_ROOT}/pyproject.toml" | head -1)"
IMAGE_NAMES=(features trainer mlflow airflow)
AIRFLOW_USER="${AIRFLOW_USER:-admin}"
AIRFLOW_PASSWORD="${AIRFLOW_PASSWORD:-}"
RUN_TIMEOUT_S="${RUN_TIMEOUT_S:-3600}"
AIRFLOW_PORT=18080
MLFLOW_PORT=15000
PORT_FORWARD_PIDS=()
KUBECTL=(kubectl --context "kind-${CLUSTER_NAME}" --namespace "${NAMESPACE}")

log() { printf '\n==> %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

check_prerequisites() {
  local missing=()
  for tool in docker kind kubectl helm curl python3 make; do
    command -v "${tool}" >/dev/null 2>&1 || missing+=("${tool}")
  done
  if ((${#missing[@]})); then
    die "missing tools: ${missing[*]}. Install them (https://kind.sigs.k8s.io/docs/user/quick-start/, https://helm.sh/docs/intro/install/) and retry."
  fi
  docker info >/dev/null 2>&1 || die "docker is installed but its daemon is not reachable (is Docker running?)"
}

cleanup() {
  local status=$?
  for pid in ${PORT_FORWARD_PIDS[@]+"${PORT_FORWARD_PIDS[@]}"}; do
    kill "${pid}" 2>/dev/null || true
  done
  if ((status != 0)); then
    printf '\nFAILED (exit %s). Cluster state:\n' "${status}" >&2
    "${KUBECTL[@]}" get pods -o wide >&2 || true
    "${KUBECTL[@]}" get events --sort-by=.lastTimestamp 2>/dev/null | tail -n 30 >&2 || true
  fi
  if [[ "${KEEP_CLUSTER:-0}" == "1" ]]; then
    printf '\nKEEP_CLUSTER=1: cluster "%s" kept (kind delete cluster --name %s).\n' "${CLUSTER_NAME}" "${CLUSTER_NAME}"
  else
    kind delete cluster --name "${CLUSTER_NAME}" >/dev/null 2>&1 || true
  fi
  exit "${status}"
}

json_field() {  # json_field KEY < json  -> prints the top-level value
  python3 -c 'import json, sys; value = json.load(sys.stdin).get(sys.argv[1]); print("" if value is None else value)' "$1"
}

urlencode() {
  python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"
}

port_forward() {  # port_forward SERVICE LOCAL_PORT REMOTE_PORT HEALTH_URL
  local service=$1 local_port=$2 remote_port=$3 health=$4
  "${KUBECTL[@]}" port-forward "svc/${service}" "${local_port}:${remote_port}" >/dev/null 2>&1 &
  PORT_FORWARD_PIDS+=("$!")
  for _ in $(seq 1 60); do
    curl -fsS -o /dev/null "${health}" 2>/dev/null && return 0
    sleep 2
  done
  die "port-forward to ${service} did not answer at ${health}"
}

create_cluster() {
  if kind get clusters 2>/dev/null | grep -qx "${CLUSTER_NAME}"; then
    log "Reusing kind cluster ${CLUSTER_NAME}"
    return
  fi
  log "Creating kind cluster ${CLUSTER_NAME}"
  local config
  config="$(mktemp)"
  sed "s#__REPO_ROOT__#${REPO_ROOT}#g" "${REPO_ROOT}/kind/kind-config.yaml" >"${config}"
  local args=(create cluster --name "${CLUSTER_NAME}" --config "${config}" --wait 180s)
  [[ -n "${KIND_NODE_IMAGE:-}" ]] && args+=(--image "${KIND_NODE_IMAGE}")
  kind "${args[@]}"
  rm -f "${config}"
}

build_and_load_images() {
  # The same build as the container tier (`make test-containers`): `make images`, on the local bases of
  # `make base-images` when they exist (machines that reach no image registry), the public ones otherwise.
  if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
    log "Building the images (make images IMAGE_TAG=${IMAGE_TAG})"
    make -C "${REPO_ROOT}" --no-print-directory images IMAGE_TAG="${IMAGE_TAG}"
  fi
  for image in "${IMAGE_NAMES[@]}"; do
    docker image inspect "mlplatform/${image}:${IMAGE_TAG}" >/dev/null 2>&1 \
      || die "no image mlplatform/${image}:${IMAGE_TAG}: run 'make images' first"
    kind load docker-image "mlplatform/${image}:${IMAGE_TAG}" --name "${CLUSTER_NAME}"
  done
}

install_chart() {
  log "Installing the chart (release ${RELEASE}, namespace ${NAMESPACE})"
  kubectl --context "kind-${CLUSTER_NAME}" create namespace "${NAMESPACE}" --dry-run=client -o yaml \
    | kubectl --context "kind-${CLUSTER_NAME}" apply -f -
  # Report (never block) pods that miss the restricted Pod Security Standard.
  kubectl --context "kind-${CLUSTER_NAME}" label namespace "${NAMESPACE}" --overwrite \
    pod-security.kubernetes.io/enforce=baseline \
    pod-security.kubernetes.io/warn=restricted \
    pod-security.kubernetes.io/audit=restricted
  kubectl --context "kind-${CLUSTER_NAME}" apply -f "${REPO_ROOT}/kind/dags-volume.yaml"
  # The pinned official chart: the archive beside the repository, else its repository.
  if ! make -C "${REPO_ROOT}" --no-print-directory chart-deps; then
    helm repo add apache-airflow https://airflow.apache.org --force-update >/dev/null
    helm dependency build "${CHART}"
  fi
  helm upgrade --install "${RELEASE}" "${CHART}" \
    --kube-context "kind-${CLUSTER_NAME}" --namespace "${NAMESPACE}" \
    -f "${KIND_VALUES}" --wait --timeout 20m
}

seed_warehouse() {
  log "Seeding the warehouse (python -m features seed ${SEED_ARGS:-})"
  "${KUBECTL[@]}" delete job mlplatform-seed --ignore-not-found --wait=true
  local -a seed_args
  read -r -a seed_args <<<"${SEED_ARGS:-}"
  local args_json
  args_json="$(python3 -c 'import json, sys; print(json.dumps(["seed", *sys.argv[1:]]))' ${seed_args[@]+"${seed_args[@]}"})"
  "${KUBECTL[@]}" apply -f - <<EOF
apiVersion: batch/v1
kind: Job
metadata:
  name: mlplatform-seed
spec:
  backoffLimit: 2
  template:
    spec:
      restartPolicy: Never
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        runAsGroup: 10001
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: seed
          image: mlplatform/features:${IMAGE_TAG}
          imagePullPolicy: Never
          command: ["python", "-m", "features"]
          args: ${args_json}
          env:
            - name: WAREHOUSE_URI
              valueFrom:
                secretKeyRef: {name: ${RELEASE}-warehouse, key: uri}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: ["ALL"]}
          volumeMounts:
            - {name: tmp, mountPath: /tmp}
      volumes:
        - {name: tmp, emptyDir: {}}
EOF
  if ! "${KUBECTL[@]}" wait --for=condition=complete job/mlplatform-seed --timeout=15m; then
    "${KUBECTL[@]}" logs job/mlplatform-seed --tail=50 >&2 || true
    die "seeding the warehouse failed"
  fi
  "${KUBECTL[@]}" logs job/mlplatform-seed --tail=5
}

airflow_api() {  # airflow_api METHOD PATH [JSON]
  local method=$1 path=$2 body=${3:-}
  local args=(-fsS -X "${method}" -H "Authorization: Bearer ${TOKEN}" -H "Content-Type: application/json")
  [[ -n "${body}" ]] && args+=(-d "${body}")
  curl "${args[@]}" "http://127.0.0.1:${AIRFLOW_PORT}${path}"
}

run_training_dag() {
  log "Triggering ${DAG_ID} through the Airflow REST API"
  port_forward "${RELEASE}-api-server" "${AIRFLOW_PORT}" 8080 "http://127.0.0.1:${AIRFLOW_PORT}/api/v2/monitor/health"
  if [[ -z "${AIRFLOW_PASSWORD}" ]]; then
    # generated once by the chart (airflowSecrets), as in production
    AIRFLOW_PASSWORD="$("${KUBECTL[@]}" get secret "${RELEASE}-airflow-admin" -o jsonpath='{.data.password}' | base64 -d)"
  fi
  TOKEN="$(curl -fsS -X POST "http://127.0.0.1:${AIRFLOW_PORT}/auth/token" \
    -H "Content-Type: application/json" \
    -d "{\"username\": \"${AIRFLOW_USER}\", \"password\": \"${AIRFLOW_PASSWORD}\"}" | json_field access_token)"
  [[ -n "${TOKEN}" ]] || die "no access token from /auth/token"

  # The DAG processor needs a moment to parse the mounted dags/ after install.
  local parsed=0
  for _ in $(seq 1 60); do
    if airflow_api GET "/api/v2/dags/${DAG_ID}" >/dev/null 2>&1; then parsed=1; break; fi
    sleep 5
  done
  ((parsed)) || die "DAG ${DAG_ID} not found (import errors? GET /api/v2/importErrors)"

  airflow_api PATCH "/api/v2/dags/${DAG_ID}" '{"is_paused": false}' >/dev/null
  local run_id
  run_id="$(airflow_api POST "/api/v2/dags/${DAG_ID}/dagRuns" '{"logical_date": null, "note": "kind-test"}' | json_field dag_run_id)"
  [[ -n "${run_id}" ]] || die "triggering ${DAG_ID} returned no dag_run_id"
  echo "dag run: ${run_id}"

  local deadline=$((SECONDS + RUN_TIMEOUT_S)) state=""
  while ((SECONDS < deadline)); do
    state="$(airflow_api GET "/api/v2/dags/${DAG_ID}/dagRuns/$(urlencode "${run_id}")" | json_field state)"
    case "${state}" in
      success) echo "run ${run_id}: success"; return 0 ;;
      failed) die "run ${run_id} failed: see the Airflow UI (kubectl -n ${NAMESPACE} port-forward svc/${RELEASE}-api-server 8080:8080)" ;;
      *) echo "run ${run_id}: ${state:-unknown} ($((deadline - SECONDS)) s left)"; sleep 20 ;;
    esac
  done
  die "run ${run_id} did not finish within ${RUN_TIMEOUT_S} s (last state: ${state})"
}

check_champion() {
  log "Checking the MLflow registry for ${MODEL_NAME}@champion"
  port_forward "${RELEASE}-mlflow" "${MLFLOW_PORT}" 5000 "http://127.0.0.1:${MLFLOW_PORT}/health"
  local response version
  response="$(curl -fsS -G "http://127.0.0.1:${MLFLOW_PORT}/api/2.0/mlflow/registered-models/alias" \
    --data-urlencode "name=${MODEL_NAME}" --data-urlencode "alias=champion")" \
    || die "no champion alias on ${MODEL_NAME}"
  version="$(printf '%s' "${response}" | python3 -c 'import json, sys; print(json.load(sys.stdin)["model_version"]["version"])')"
  echo "${MODEL_NAME}@champion -> version ${version}"
}

main() {
  check_prerequisites
  trap cleanup EXIT
  cd "${REPO_ROOT}"
  create_cluster
  build_and_load_images
  install_chart
  seed_warehouse
  run_training_dag
  check_champion
  log "kind test passed"
  cat <<EOF
Where to look (with KEEP_CLUSTER=1):
  Airflow UI:  kubectl --context kind-${CLUSTER_NAME} -n ${NAMESPACE} port-forward svc/${RELEASE}-api-server 8080:8080   (${AIRFLOW_USER}; password in secret/${RELEASE}-airflow-admin)
  MLflow UI:   kubectl --context kind-${CLUSTER_NAME} -n ${NAMESPACE} port-forward svc/${RELEASE}-mlflow 5000:5000
  MinIO:       kubectl --context kind-${CLUSTER_NAME} -n ${NAMESPACE} port-forward svc/${RELEASE}-minio 9001:9001
  Step pods:   kubectl --context kind-${CLUSTER_NAME} -n ${NAMESPACE} get pods -l dag_id=${DAG_ID}
EOF
}

main "$@"
