#!/usr/bin/env bash
# Every path of the project that needs a CUDA GPU, in one command, with a pass/fail table and timings
# (docs/vllm.md, "GPU check"). Run it on a machine with one CUDA GPU; it finishes within
# GPU_CHECK_BUDGET_S seconds (default 480 = 8 minutes, install included) or reports what ran out of time.
#
#   bash scripts/gpu_check.sh
#
# Checks (each in its own process, so one crash cannot take the others down):
#   environment      a venv with vllm (+ its CUDA torch), ray and this repo; torch sees the GPU
#   vllm_text        tests/test_gpu.py: vLLM toolqa rollouts = transformers; learner step + load_weights
#   vllm_vl          tests/test_gpu.py: tiny Qwen2.5-VL student/teacher in vLLM with images
#   fsdp_bf16        tests/test_gpu.py: accelerate FSDP2 learner on one GPU in bf16 vs the fp32 learner
#   vllm_lora        tests/test_lora.py: vLLM load_weights of a LoRA student (adapters merged) = transformers
#   packing_gpu      tests/test_packing.py: padding-free learner forward on the GPU (sdpa bins) = the padded pass
#   packing_flash    tests/test_packing.py: the same through flash-attn's varlen kernel (only where flash-attn
#                    is installed in the check's python; otherwise a line says it was not run)
#   ray_gpu_rollout  python -m reopold_agents.run ... engine=vllm distributed=ray with a GPU rollout worker
#
# Environment variables:
#   GPU_CHECK_PYTHON   a python that already has vllm, ray, pytest and this repo: used as is, no install
#   GPU_CHECK_VENV     venv to create or reuse otherwise (default .cache/gpu-venv, git-ignored)
#   VLLM_VERSION       vllm release to install (default 0.33.0; the engine needs >= 0.32's reload_weights)
#   GPU_CHECK_BUDGET_S total time limit in seconds (default 480)
#   GPU_CHECK_LOGS     where each check's full output goes (default outputs/gpu_check)
# Exit status: 0 all passed, 1 some check failed, 2 no usable CUDA GPU (nothing is installed then).
set -uo pipefail
cd "$(dirname "$0")/.."

START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-480}
LOGS=${GPU_CHECK_LOGS:-outputs/gpu_check}
VLLM_VERSION=${VLLM_VERSION:-0.33.0}

no_gpu() {
  echo "gpu_check: no GPU: $1" >&2
  echo "gpu_check: this check needs a machine with one CUDA GPU; nothing was run (docs/vllm.md, \"GPU check\")" >&2
  exit 2
}

# --- refuse early and cheaply when there is no GPU (before installing anything)
command -v nvidia-smi >/dev/null 2>&1 || no_gpu "nvidia-smi not found (no NVIDIA driver on this machine)"
GPUS=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
[ "${GPUS:-0}" -ge 1 ] || no_gpu "nvidia-smi lists no GPU"

mkdir -p "$LOGS"
LOGS=$(cd "$LOGS" && pwd)
NAMES=()
RESULTS=()
TIMES=()
NOTES=()

elapsed() { echo $(( $(date +%s) - START )); }

record() {  # name result seconds note
  NAMES+=("$1"); RESULTS+=("$2"); TIMES+=("$3"); NOTES+=("$4")
  printf 'gpu_check: %-16s %s (%ss) %s\n' "$1" "$2" "$3" "$4"
}

# run_check NAME CAP_S CMD...: runs CMD with a timeout of min(CAP_S, time left), output to $LOGS/NAME.log
run_check() {
  local name=$1 cap=$2
  shift 2
  local left=$(( BUDGET - $(elapsed) ))
  if [ "$left" -lt 15 ]; then
    record "$name" FAIL 0 "not run: the ${BUDGET}s budget is spent"
    return 1
  fi
  local limit=$(( cap < left ? cap : left ))
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  CHECK_SECONDS=$(( $(date +%s) - t0 ))
  CHECK_RC=$rc
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    record "$name" FAIL "$CHECK_SECONDS" "timed out after ${limit}s (log: $LOGS/$name.log)"
    return 1
  fi
  return 0
}

pytest_check() {  # NAME CAP_S TEST_NODE: pass = exit 0 with a test passed and none skipped
  local name=$1 cap=$2 node=$3
  run_check "$name" "$cap" "$PY" -m pytest -q -p no:cacheprovider -rs -m gpu "$node" || return 0
  local last
  last=$(grep -E '(passed|failed|error|skipped|no tests ran)' "$LOGS/$name.log" | tail -n 1)
  if [ "$CHECK_RC" -eq 0 ] && grep -q ' passed' <<<"$last" && ! grep -q 'skipped' <<<"$last"; then
    record "$name" PASS "$CHECK_SECONDS" ""
  else
    local why
    why=$(grep -m 1 '^SKIPPED' "$LOGS/$name.log")  # a skip is a failure here: say why it skipped
    record "$name" FAIL "$CHECK_SECONDS" "${why:-${last:-exit $CHECK_RC}} (log: $LOGS/$name.log)"
  fi
}

# --- environment: reuse GPU_CHECK_PYTHON, or a venv with vllm's CUDA torch kept while the repo installs
setup_env() {
  if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    PY=$GPU_CHECK_PYTHON
    return 0
  fi
  local venv=${GPU_CHECK_VENV:-.cache/gpu-venv}
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || return 1
  PY=$(cd "$venv" && pwd)/bin/python
  if "$PY" -c "import vllm, ray, pytest, accelerate, reopold_agents" >/dev/null 2>&1; then
    return 0
  fi
  "$PY" -m pip install -q --upgrade pip || return 1
  "$PY" -m pip install -q "vllm==$VLLM_VERSION" || return 1
  # vllm pins its torch build; keep it (and what was built against it) while the repo's deps install.
  "$PY" -m pip freeze | grep -iE '^(torch|torchvision|torchaudio|triton|xformers|transformers)==' >"$venv/vllm-pins.txt"
  "$PY" -m pip install -q -c "$venv/vllm-pins.txt" -e ".[dev,ray]" || return 1
}

PY=""
t0=$(date +%s)
setup_env >"$LOGS/environment.log" 2>&1
env_rc=$?
env_s=$(( $(date +%s) - t0 ))
if [ "$env_rc" -ne 0 ] || [ -z "$PY" ]; then
  record environment FAIL "$env_s" "install failed (no registry access? set GPU_CHECK_PYTHON) (log: $LOGS/environment.log)"
else
  cuda=$("$PY" -c "import torch; print(torch.cuda.is_available() and torch.cuda.device_count())" 2>>"$LOGS/environment.log")
  if [ "$cuda" = "False" ] || [ "$cuda" = "0" ] || [ -z "$cuda" ]; then
    no_gpu "nvidia-smi lists $GPUS GPU(s) but torch in $PY cannot use CUDA (driver / CUDA build mismatch?)"
  fi
  versions=$("$PY" -c "import torch, vllm, ray, transformers; print(f'torch {torch.__version__} vllm {vllm.__version__} ray {ray.__version__} transformers {transformers.__version__} gpu {torch.cuda.get_device_name(0)}')" 2>>"$LOGS/environment.log")
  if [ -n "$versions" ]; then
    record environment PASS "$env_s" "$versions"
  else
    record environment FAIL "$env_s" "vllm/ray/transformers do not import (log: $LOGS/environment.log)"
  fi
fi

if [ "${RESULTS[0]}" = PASS ]; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's code, whatever the venv has installed
  pytest_check vllm_text 150 tests/test_gpu.py::test_vllm_text_generation_and_reload_after_learner_step
  pytest_check vllm_vl 150 tests/test_gpu.py::test_vllm_vl_pair_with_images
  pytest_check fsdp_bf16 120 tests/test_gpu.py::test_fsdp_learner_one_gpu_bf16
  pytest_check vllm_lora 120 tests/test_lora.py::test_vllm_engine_loads_lora_adapters_merged
  pytest_check packing_gpu 120 tests/test_packing.py::test_gpu_packed_equals_padded_sdpa
  if "$PY" -c "import flash_attn" >/dev/null 2>&1; then
    pytest_check packing_flash 120 tests/test_packing.py::test_gpu_packed_flash_varlen_equals_padded
  else
    echo "gpu_check: packing_flash not run: flash-attn is not installed in $PY (pip install flash-attn)"
  fi
  RUN_DIR="$LOGS/ray_run"
  rm -rf "$RUN_DIR"
  if run_check ray_gpu_rollout 240 "$PY" -m reopold_agents.run env=toolqa engine=vllm distributed=ray \
      distributed.ray.num_rollout_workers=1 distributed.ray.gpus_per_rollout_worker=1 distributed.ray.local_num_cpus=4 \
      engine.gpu_memory_utilization=0.25 engine.sampling.max_new_tokens=32 engine.max_model_len=2048 \
      trainer.total_steps=2 trainer.prompts_per_step=4 trainer.group_size=2 trainer.eval_every=0 \
      trainer.save_every=0 "trainer.output_dir=$RUN_DIR" "hydra.run.dir=$RUN_DIR/hydra"; then
    steps=$(grep -c '"step"' "$RUN_DIR/metrics.jsonl" 2>/dev/null || echo 0)
    if [ "$CHECK_RC" -eq 0 ] && [ -f "$RUN_DIR/summary.json" ] && [ "$steps" -ge 2 ]; then
      record ray_gpu_rollout PASS "$CHECK_SECONDS" "2 steps, summary in $RUN_DIR"
    else
      record ray_gpu_rollout FAIL "$CHECK_SECONDS" "exit $CHECK_RC, $steps metric lines (log: $LOGS/ray_gpu_rollout.log)"
    fi
  fi
else
  for name in vllm_text vllm_vl fsdp_bf16 vllm_lora packing_gpu ray_gpu_rollout; do
    record "$name" FAIL 0 "not run: no environment"
  done
fi

echo
printf '%-16s %-6s %8s  %s\n' check result seconds note
failed=0
for i in "${!NAMES[@]}"; do
  printf '%-16s %-6s %8s  %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${TIMES[$i]}" "${NOTES[$i]}"
  [ "${RESULTS[$i]}" = PASS ] || failed=$((failed + 1))
done
echo "total $(elapsed)s (budget ${BUDGET}s): $(( ${#NAMES[@]} - failed )) passed, $failed failed"
[ "$failed" -eq 0 ]
