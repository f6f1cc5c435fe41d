#!/usr/bin/env bash
# Run AutoMem's Prefect stack on one machine: server, work pool, deployments, worker.
#
#   deployments/stack.sh server   # start `prefect server` in the background (UI on $PORT)
#   deployments/stack.sh deploy   # create the process work pool, deploy prefect.yaml
#   deployments/stack.sh worker   # start a worker on the pool in the background
#   deployments/stack.sh stop     # stop worker then server (bounded wait, then SIGKILL)
#
# Settings (environment): AUTOMEM_WORKSPACE (default ./automem-runs), PORT (4200),
# PREFECT_HOME (default inside the workspace). Process ids are kept in $STATE.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
PORT=${PORT:-4200}
export AUTOMEM_WORKSPACE=${AUTOMEM_WORKSPACE:-$PWD/automem-runs}
export PREFECT_HOME=${PREFECT_HOME:-$AUTOMEM_WORKSPACE/prefect-home}
export PREFECT_API_URL=${PREFECT_API_URL:-http://127.0.0.1:$PORT/api}
export PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 PREFECT_CLI_PROMPT=false
export PREFECT_LOGGING_EXTRA_LOGGERS=agent_core,environments
export AUTOMEM_PROJECT_DIR=$PWD
STATE=${STATE:-$AUTOMEM_WORKSPACE/stack}
mkdir -p "$STATE" "$PREFECT_HOME"
set -m  # job control: background jobs get their own process group and honour SIGTERM

stop_pid() {  # name: SIGTERM the process group, wait up to 20 s, then SIGKILL
  local f="$STATE/$1.pid"
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  rm -f "$f"
}

case "${1:-}" in
  server)
    # SERVER_ARGS: e.g. --no-scheduler for checks that must not start scheduled runs
    "$BIN/prefect" server start --host 127.0.0.1 --port "$PORT" ${SERVER_ARGS:-} > "$STATE/server.log" 2>&1 &
    echo $! > "$STATE/server.pid"
    for _ in $(seq 240); do
      "$BIN/python" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" \
        "http://127.0.0.1:$PORT/api/health" 2>/dev/null && { echo "server up: http://127.0.0.1:$PORT"; exit 0; }
      sleep 0.5
    done
    echo "server did not become healthy; see $STATE/server.log" >&2; exit 1 ;;
  deploy)
    "$BIN/prefect" work-pool create automem --type process --overwrite
    "$BIN/prefect" deploy --no-prompt --all --prefect-file deployments/prefect.yaml ;;
  worker)
    "$BIN/prefect" worker start --pool automem > "$STATE/worker.log" 2>&1 &
    echo $! > "$STATE/worker.pid"
    echo "worker started (log: $STATE/worker.log)" ;;
  stop)
    stop_pid worker   # first: a worker whose server is gone retries forever
    stop_pid server ;;
  *)
    sed -n '2,12p' "$0"; exit 2 ;;
esac
