#!/bin/bash
# Issue 11, after the fix of build.py (PPO got a no-op extra loss, so every run trained eagerly).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target .site .whl/*.whl 2>/dev/null
ln -sfn $PWD/envs .site/hope_envs && ln -sfn $PWD/configs .site/hope_configs
export PYTHONPATH=$PWD/.site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv > $OUT/nvidia-smi.txt 2>&1
echo "== loop"; timeout 260 python3 scripts/benchmark_loop.py --curriculum adapt --num-envs 128 --rollout-len 128 --steps 327680 --eval-episodes 2 --vec sync --backbones hope,hope:graph,mlp,mlp:graph --out /tmp/loop > $OUT/loop.log 2>&1; tail -12 $OUT/loop.log
cp /tmp/loop/benchmark_loop.json $OUT/ 2>/dev/null
echo "== profile"; timeout 120 python3 results/gpu_2026-12-07_graph/profile_update.py --out $OUT > $OUT/profile_update.log 2>&1; grep "|\|graphed" $OUT/profile_update.log
