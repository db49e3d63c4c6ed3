#!/bin/bash
# Issue 11, first GPU call for graph_update (session 17). Each step bounded by `timeout`.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target .site .whl/*.whl 2>/dev/null
ln -sfn $PWD/envs .site/hope_envs && ln -sfn $PWD/configs .site/hope_configs
export PYTHONPATH=$PWD/.site:$PWD
nvidia-smi > $OUT/nvidia-smi.txt 2>&1
python3 -c "import torch,sys;print(torch.__version__, torch.version.cuda, sys.version)" > $OUT/torch.txt 2>&1
git log --oneline -1 >> $OUT/torch.txt 2>&1
echo "== pytest"; timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_ppo.py tests/test_hope.py tests/test_agent.py -k "cuda or graph" 2>&1 | tail -25 | tee $OUT/pytest.log
echo "== probe"; timeout 120 python3 results/cpu_2026-12-07_compile/probe_train_compile.py --shapes 64:8:1:16:120,64:8:1:128:120 --modes eager,graph --json $OUT/probe.json > $OUT/probe.log 2>&1; tail -12 $OUT/probe.log
echo "== loop"; timeout 280 python3 scripts/benchmark_loop.py --curriculum adapt --num-envs 128 --rollout-len 128 --steps 163840 --eval-episodes 2 --vec sync --backbones hope,hope:graph,mlp,mlp:graph --out /tmp/loop > $OUT/loop.log 2>&1; tail -30 $OUT/loop.log
cp /tmp/loop/benchmark_loop.json /tmp/loop/benchmark_loop.md $OUT/ 2>/dev/null
ls /tmp/loop
