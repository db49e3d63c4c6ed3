#!/usr/bin/env bash
# One device call: install the wheels, run a jobs file 16 at once on the CPU cores, pack the runs
# (checkpoints left out) into $OUT. Usage: bash device_run.sh JOBS_FILE "COMMON OVERRIDES" LIMIT_S
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
mkdir -p /tmp/pp && ln -sfn "$PWD/hope_agent" /tmp/pp/hope_agent && ln -sfn "$PWD/envs" /tmp/pp/hope_envs \
  && ln -sfn "$PWD/configs" /tmp/pp/hope_configs
export PYTHONPATH=/tmp/site:/tmp/pp
# The jobs runner of the first study (one process and one torch thread a job).
RUNS=/tmp/runs JOBS=16 LIMIT=$3 bash results/h200_2026-12-02_study/run_jobs.sh "$1" "$2"
cat /tmp/runs/status.txt
tar -C /tmp/runs --exclude=checkpoints --exclude=plots -czf "$OUT/runs.tgz" .
