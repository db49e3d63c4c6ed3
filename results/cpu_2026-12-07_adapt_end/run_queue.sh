#!/usr/bin/env bash
# Issue 10: one `adapt` task (east/north candidates) with shaping=end, 5M steps, 128 envs as
# 2 ranks x 64 on the 2-core CPU (STEPS: another budget), the setting of ../cpu_2026-12-03_adapt_end/gru_end_s0.
# Usage: [STEPS=N] bash run_queue.sh RUNS_DIR "model=hope seed=0 compile=true" "model=gru seed=1" ...
set -u
runs=$1; shift
mkdir -p "$runs"
for job in "$@"; do
  name=$(echo "$job" | tr ' =' '_-' | tr -d '[]{},:')
  echo "$(date -u +%FT%T) start $name"
  python -m torch.distributed.run --nproc_per_node 2 scripts/train_curriculum.py $job \
    ppo.num_envs=64 ppo.seq_len=120 ppo.rollout_len=120 device=cpu torch_threads=1 \
    curriculum=adapt curriculum.name=adapt1 \
    "curriculum.tasks=[{id:hope/PointAdapt-v0,kwargs:{goals:[[0.6,0.0],[0.0,0.6]],shaping:end},steps:${STEPS:-5000000},name:adapt_en}]" \
    eval.episodes=40 eval.every=500000 eval.in_context_gain=true video.enabled=false \
    checkpoint.every=1000000 logger.tensorboard=false logger.progress=false \
    hydra.run.dir="$runs/$name" > "$runs/$name.log" 2>&1
  echo "$(date -u +%FT%T) end $name rc=$?"
done
