#!/usr/bin/env bash
# Issue 10 on the lent GPU machine: several `adapt` runs (the setting of
# ../cpu_2026-12-07_adapt_end/run_queue.sh plus ppo.anneal_lr=true) at once, one process of 128
# envs each on the one GPU (graph_update on), each bounded by MINUTES; then the memory ablation
# of every finished run. Only the small result files come back ($OUT/runs.tgz). The runs live in
# /tmp/runs with a checkpoint every 500k steps and resume=true: the same command again on the
# still-warm machine (within its 30 s idle release) continues them; a fresh machine starts over.
# Usage (device, repo root): bash results/gpu_adapt_anneal/run_concurrent.sh MINUTES "model=gru seed=5" ...
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target .site .whl/*.whl 2>/dev/null
ln -sfn "$PWD/envs" .site/hope_envs && ln -sfn "$PWD/configs" .site/hope_configs
export PYTHONPATH=$PWD/.site:$PWD
minutes=$1; shift
runs=/tmp/runs; mkdir -p "$runs"
for job in "$@"; do
  name=$(echo "$job" | tr ' =' '_-' | tr -d '[]{},:')
  timeout $((minutes * 60)) python3 scripts/train_curriculum.py $job ppo.anneal_lr=true \
    ppo.num_envs=128 ppo.seq_len=120 ppo.rollout_len=120 device=cuda torch_threads=1 \
    curriculum=adapt curriculum.name=adapt1 \
    "curriculum.tasks=[{id:hope/PointAdapt-v0,kwargs:{goals:[[0.6,0.0],[0.0,0.6]],shaping:end},steps:5000000,name:adapt_en}]" \
    eval.episodes=40 eval.every=500000 eval.in_context_gain=true video.enabled=false \
    checkpoint.every=500000 resume=true logger.tensorboard=false logger.progress=false \
    hydra.run.dir="$runs/$name" > "$runs/$name.log" 2>&1 &
done
wait
for d in "$runs"/*/; do
  if [ -f "$d/metrics.json" ] && [ -d "$d/checkpoints/stage_00" ] && [ ! -f "$d/ablate_5M.json" ]; then
    python3 results/cpu_2026-12-03_hope_memory_ablation/ablate_memory.py "$d/checkpoints/stage_00" \
      --out "$d/ablate_5M.json" > "$d/ablate.log" 2>&1
  fi
  tail -2 "$d/train.csv" | cut -c1-12
done
tar czf "$OUT/runs.tgz" -C "$runs" --exclude=checkpoints --exclude=tb --exclude=plots .
ls -la "$OUT"
