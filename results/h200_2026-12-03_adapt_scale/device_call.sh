#!/usr/bin/env bash
# One device call (the H200 machine's 16 CPU cores): two data-parallel runs (torchrun, gloo, one
# torch thread a rank) and two single-process runs at once, on one `adapt` task with the dense
# shaping (the distance to the live goal). Runs (checkpoints left out) go to $OUT/runs.tgz.
# Usage: bash device_call.sh LIMIT_S
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
mkdir -p /tmp/pp && ln -sfn "$PWD/hope_agent" /tmp/pp/hope_agent && ln -sfn "$PWD/envs" /tmp/pp/hope_envs \
  && ln -sfn "$PWD/configs" /tmp/pp/hope_configs
export PYTHONPATH=/tmp/site:/tmp/pp OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
limit=$1
task() {  # task STEPS [KWARGS]
  echo "curriculum.tasks=[{id:hope/PointAdapt-v0,kwargs:{goals:[[0.6,0.0],[0.0,0.6]],shaping:goal$2},steps:$1,name:adapt_en}]"
}
common="curriculum=adapt curriculum.name=adapt1 ppo.num_envs=64 ppo.seq_len=120 ppo.rollout_len=120
  eval.episodes=40 eval.in_context_gain=true device=cpu torch_threads=1 video.enabled=false
  logger.tensorboard=false logger.progress=false seed=0"
mkdir -p /tmp/runs
run() {  # run LABEL NPROC OVERRIDES...
  local label=$1 n=$2; shift 2
  ( start=$(date +%s)
    if [ "$n" -gt 1 ]; then launch=(torchrun --nproc_per_node "$n" --master_port $((29500 + RANDOM % 1000)));
    else launch=(python3); fi
    # shellcheck disable=SC2086
    timeout "$limit" "${launch[@]}" scripts/train_curriculum.py $common "$@" \
      "hydra.run.dir=/tmp/runs/$label" >"/tmp/runs/$label.log" 2>&1
    echo "$label rc=$? wall=$(( $(date +%s) - start ))s" >>/tmp/runs/status.txt ) &
}
run gru_dense_dp8 8 model=gru "$(task 10000000)" eval.every=1000000
run hope_dense_dp6 6 model=hope "$(task 2000000)" eval.every=250000
run mlp_dense 1 model=mlp "$(task 3000000)" eval.every=500000
run mlp_oracle_dense 1 model=mlp "$(task 1000000 ,goal_hint:true)" eval.every=250000
wait
cat /tmp/runs/status.txt
tar -C /tmp/runs --exclude=checkpoints --exclude=plots -czf "$OUT/runs.tgz" .
