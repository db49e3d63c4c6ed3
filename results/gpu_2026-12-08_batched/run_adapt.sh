#!/usr/bin/env bash
# Issue 10 on the GPU machine with batched envs: adapt shaping=end, anneal, 5M steps, 128 envs, concurrent runs.
# Usage: [STEPS=N] [ANNEAL=false] bash results/gpu_2026-12-08_batched/run_adapt.sh SECONDS "model=hope seed=0" ...
set -u
secs=$1; shift
runs=/tmp/runs; mkdir -p "$runs"
for job in "$@"; do
  name=$(echo "$job" | tr ' =' '_-' | tr -d '[]{},:')
  timeout "$secs" python3 scripts/train_curriculum.py $job ppo.anneal_lr=${ANNEAL:-true} ppo.batched_envs=true \
    ppo.num_envs=128 ppo.seq_len=120 ppo.rollout_len=120 device=cuda torch_threads=1 \
    curriculum=adapt curriculum.name=adapt1 \
    "curriculum.tasks=[{id:hope/PointAdapt-v0,kwargs:{goals:[[0.6,0.0],[0.0,0.6]],shaping:end},steps:${STEPS:-5000000},name:adapt_en}]" \
    eval.episodes=40 eval.every=500000 eval.in_context_gain=true video.enabled=false \
    checkpoint.every=0 logger.tensorboard=false logger.progress=false \
    hydra.run.dir="$runs/$name" > "$runs/$name.log" 2>&1 &
done
wait
for d in "$runs"/*/; do
  n=$(basename "$d"); tail -1 "$d/train.csv" | cut -c1-10
  [ -d "$d/checkpoints" ] && tar czf "$OUT/ckpt_$n.tgz" -C "$d" checkpoints
done
tar czf "$OUT/runs.tgz" -C "$runs" --exclude=checkpoints --exclude=tb --exclude=plots .
ls -la "$OUT"
