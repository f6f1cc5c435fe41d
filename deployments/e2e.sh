#!/usr/bin/env bash
# End-to-end check of the real stack (run by the test suite once per run):
# prefect server -> work pool -> deploy prefect.yaml -> worker -> run the rollout
# deployment (tiny game, scripted model) -> wait for Completed -> the Prefect UI in headless
# Chromium shows the run and its table artifact; then the evaluate deployment, whose
# markdown artifact must render its plot images with a non-zero size (screenshots saved
# in the workspace).
#   usage: deployments/e2e.sh WORKSPACE [PORT]
set -euo pipefail
cd "$(dirname "$0")/.."
export AUTOMEM_WORKSPACE=$(realpath -m "$1")
export PORT=${2:-4311}
export PREFECT_HOME=$AUTOMEM_WORKSPACE/prefect-home
export PREFECT_API_URL=http://127.0.0.1:$PORT/api
export STATE=$AUTOMEM_WORKSPACE/stack
export SERVER_ARGS=--no-scheduler  # the nightly deployment's cron must not fire during the check
BIN=${BIN:-.venv/bin}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}
[ -n "$CHROMIUM" ] || { echo "chromium is not installed (Debian package 'chromium')" >&2; exit 3; }
mkdir -p "$AUTOMEM_WORKSPACE/screenshots"

trap 'deployments/stack.sh stop' EXIT
deployments/stack.sh server
deployments/stack.sh deploy
deployments/stack.sh worker

params=$(cat <<JSON
{"params": {"games": ["tiny"], "seeds": [0, 1], "max_steps": 5, "concurrency": 2,
            "models": {"backend": "scripted"}, "workspace": "$AUTOMEM_WORKSPACE"}}
JSON
)
"$BIN/prefect" deployment run rollout/rollout --params "$params" --flow-run-name e2e-rollout \
  --watch --watch-timeout 300
eval_params=$(cat <<JSON
{"params": {"arms": [{"scaffold": "baseline"}, {"scaffold": "v0"}], "games": ["tiny"], "seeds": [0, 1],
            "max_steps": 5, "concurrency": 2, "models": {"backend": "scripted"}, "workspace": "$AUTOMEM_WORKSPACE"}}
JSON
)
"$BIN/prefect" deployment run evaluate/evaluate --params "$eval_params" --flow-run-name e2e-evaluate \
  --watch --watch-timeout 300

browse() {  # url, extra args...
  local url=$1; shift
  timeout 120 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$(mktemp -d)" --virtual-time-budget=30000 "$@" "$url" 2>/dev/null
}
ui=http://127.0.0.1:$PORT
api_id() {  # endpoint, filter JSON -> id of the first match
  "$BIN/python" - "$PREFECT_API_URL/$1/filter" "$2" <<'PY'
import json, sys, urllib.request
request = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), headers={"content-type": "application/json"})
print(json.load(urllib.request.urlopen(request, timeout=30))[0]["id"])
PY
}
run_id=$(api_id flow_runs '{"flow_runs": {"name": {"any_": ["e2e-rollout"]}}}')
artifact_id=$(api_id artifacts '{"artifacts": {"key": {"any_": ["rollout-episodes"]}}}')
shots=$AUTOMEM_WORKSPACE/screenshots
for page in "run:runs/flow-run/$run_id" "artifact:artifacts/artifact/$artifact_id"; do
  name=${page%%:*} url=$ui/${page#*:}
  browse "$url" --dump-dom > "$shots/$name.html"
  browse "$url" --run-all-compositor-stages-before-draw --window-size=1400,1300 \
    --screenshot="$shots/$name.png" > /dev/null || true
done

eval_artifact=$(api_id artifacts '{"artifacts": {"key": {"any_": ["evaluate-report"]}}}')
"$BIN/python" deployments/ui_images.py "$ui/artifacts/artifact/$eval_artifact" "$shots/evaluate.png" \
  --chromium "$CHROMIUM" > "$shots/evaluate.json" || true

fail=0
grep -q '"ok": true' "$shots/evaluate.json" ||
  { echo "UI: the evaluate artifact's plots are not rendered: $(cat "$shots/evaluate.json")" >&2; fail=1; }
grep -q "e2e-rollout" "$shots/run.html" || { echo "UI: flow run page does not name the run" >&2; fail=1; }
grep -q "<span>Completed</span>" "$shots/run.html" || { echo "UI: run not shown as Completed" >&2; fail=1; }
grep -q "rollout-episodes" "$shots/artifact.html" && grep -q "write_search_ratio" "$shots/artifact.html" ||
  { echo "UI: table artifact not shown" >&2; fail=1; }
[ $fail = 0 ] && echo "e2e: run Completed and shown in the UI with its table artifact, evaluate plots rendered (screenshots in $shots)"
exit $fail
