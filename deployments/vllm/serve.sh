#!/usr/bin/env bash
# Serve a base model with vLLM for AutoMem: OpenAI-compatible API, structured outputs (the
# reply grammars), runtime LoRA loading (memory specialists), prefix caching (LOG and PLAN
# resend a long shared conversation). Run it in vLLM's own environment: vllm pins torch and
# transformers versions that differ from ours.
#   usage: deployments/vllm/serve.sh BASE [PORT]      e.g. Qwen/Qwen2.5-32B-Instruct 8000
# Environment: MAX_LORA_RANK (16; one of 1 8 16 32 64 128 256 320 512, at least the adapters'
# rank), MAX_LORAS (4), GPU_MEMORY_UTILIZATION (vLLM's 0.9; lower it, e.g. 0.5, when the
# LoRA training shares the GPU), VLLM (the vllm executable), EXTRA_ARGS (e.g.
# "--tensor-parallel-size 2"), BATCH_INVARIANT (auto: vLLM's batch-invariant mode,
# VLLM_BATCH_INVARIANT=1, where every GPU has compute capability 9.0+ - H100/H200 - so a reply
# does not depend on the requests decoded beside it; 1: on; 0: off). Tell the flows what was
# chosen: the model config's `batch_invariant` (printed below) goes into every episode key, and
# with it off reports say replays on this server are not exact.
# Adapter folders must be visible to the server at the paths the flows send (a shared
# filesystem); the training loop's `train_base` must be this BASE's weights folder.
set -euo pipefail
BASE=${1:?usage: serve.sh BASE [PORT]}
PORT=${2:-8000}
RANK=${MAX_LORA_RANK:-16}
case " 1 8 16 32 64 128 256 320 512 " in *" $RANK "*) ;; *)
  echo "MAX_LORA_RANK must be one of 1 8 16 32 64 128 256 320 512 (vLLM), got $RANK" >&2; exit 2;; esac
export VLLM_ALLOW_RUNTIME_LORA_UPDATING=1  # /v1/load_lora_adapter and /v1/unload_lora_adapter
INVARIANT=${BATCH_INVARIANT:-auto}
if [ "$INVARIANT" = auto ]; then
  # the lowest compute capability of the GPUs (e.g. 9.0); none found: off
  CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | sort -n | head -n 1 || true)
  INVARIANT=$(awk -v c="${CAP:-0}" 'BEGIN { print (c + 0 >= 9.0) ? 1 : 0 }')
  echo "GPU compute capability ${CAP:-unknown}: batch-invariant mode $([ "$INVARIANT" = 1 ] && echo on || echo off)"
fi
case "$INVARIANT" in
  1) export VLLM_BATCH_INVARIANT=1
     echo "batch-invariant: on (set models.batch_invariant: true)";;
  0) unset VLLM_BATCH_INVARIANT
     echo "batch-invariant: off (models.batch_invariant: false; replays on this server are not exact)";;
  *) echo "BATCH_INVARIANT must be auto, 1 or 0, got $INVARIANT" >&2; exit 2;;
esac
"${VLLM:-vllm}" serve "$BASE" --port "$PORT" --enable-lora --max-lora-rank "$RANK" \
  --max-loras "${MAX_LORAS:-4}" --enable-prefix-caching \
  --gpu-memory-utilization "${GPU_MEMORY_UTILIZATION:-0.9}" ${EXTRA_ARGS:-} &
server=$!
trap 'kill $server 2>/dev/null || true' INT TERM
for _ in $(seq 1 600); do  # large models take minutes to load
  if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null; then
    echo "vLLM serving $BASE on http://127.0.0.1:$PORT/v1 (LoRA rank <= $RANK)"
    wait $server
    exit $?
  fi
  kill -0 $server 2>/dev/null || { echo "vLLM exited before it was healthy" >&2; wait $server; exit 1; }
  sleep 2
done
echo "vLLM did not become healthy within 20 minutes" >&2
kill $server
exit 1
