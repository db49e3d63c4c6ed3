#!/usr/bin/env bash
# Run a jobs file (lines: LABEL SEED OVERRIDES...) in parallel, one process and one torch thread a
# job, with COMMON overrides added to every job; each run goes to $RUNS/LABEL__sSEED.
# Usage: RUNS=/tmp/runs JOBS=16 bash run_jobs.sh jobs_fast.txt "agent.task_id=true steps_per_task=30000"
set -u
jobs_file=$1
common=$2
mkdir -p "$RUNS"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
while read -r label seed rest; do
  [ -n "$label" ] || continue
  dir="$RUNS/${label}__s${seed}"
  # shellcheck disable=SC2086  # the overrides are words
  ( start=$(date +%s)
    timeout "${LIMIT:-560}" python3 scripts/train_curriculum.py $common $rest "seed=$seed" \
      device=cpu video.enabled=false logger.tensorboard=false logger.progress=false \
      "hydra.run.dir=$dir" >"$dir.log" 2>&1
    echo "$label $seed rc=$? wall=$(( $(date +%s) - start ))s" >>"$RUNS/status.txt" ) &
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-16}" ]; do sleep 1; done
done <"$jobs_file"
wait
