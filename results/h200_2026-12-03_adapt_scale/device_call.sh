#!/usr/bin/env bash
# One device call (the H200 machine's 16 CPU cores): the runs of $RUNS_FILE at once, each data-parallel
# over its own ranks (torchrun, gloo, one torch thread a rank), on one `adapt` task. The runs,
# without checkpoints, go to $OUT/runs.tgz.
# Usage: RUNS_FILE=runs1.txt bash device_call.sh LIMIT_S
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
mkdir -p /tmp/pp && ln -sfn "$PWD/hope_agent" /tmp/pp/hope_agent && ln -sfn "$PWD/envs" /tmp/pp/hope_envs \
  && ln -sfn "$PWD/configs" /tmp/pp/hope_configs
export PYTHONPATH=/tmp/site:/tmp/pp OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
limit=$1
common="curriculum=adapt curriculum.name=adapt1 checkpoint.every=${CKPT_EVERY:-500000} ppo.seq_len=120 ppo.rollout_len=120
  eval.episodes=40 eval.in_context_gain=true device=cpu torch_threads=1 video.enabled=false
  logger.tensorboard=false logger.progress=false"
mkdir -p /tmp/runs
run() {  # run LABEL NPROC OVERRIDES...
  local label=$1 n=$2; shift 2
  ( start=$(date +%s)
    if [ "$n" -gt 1 ]; then launch=(python3 -m torch.distributed.run --nproc_per_node "$n" --master_port $((29500 + RANDOM % 1000)));
    else launch=(python3); fi
    # shellcheck disable=SC2086
    timeout "$limit" "${launch[@]}" scripts/train_curriculum.py $common "$@" \
      "hydra.run.dir=/tmp/runs/$label" >"/tmp/runs/$label.log" 2>&1
    echo "$label rc=$? wall=$(( $(date +%s) - start ))s" >>/tmp/runs/status.txt ) &
}
# The runs: one line each, "LABEL NPROC OVERRIDES..." in $RUNS_FILE; a run whose folder is still
# in /tmp/runs (an earlier call on the same warm machine) or was carried in under runs/ resumes
# there (the same number of ranks).
while read -r label n rest; do
  [ -n "$label" ] || continue
  [ -d "/tmp/runs/$label" ] || [ ! -d "runs/$label" ] || cp -r "runs/$label" /tmp/runs/
  # shellcheck disable=SC2086
  if [ -d "/tmp/runs/$label" ]; then run "$label" "$n" $rest resume=true;
  else run "$label" "$n" $rest; fi
done <"$RUNS_FILE"
wait
cat /tmp/runs/status.txt
# Checkpoints stay behind (a HOPE run's are ~100 MB a step, over the 16 MiB a returned file may be).
tar -C /tmp/runs --exclude=plots --exclude=checkpoints -czf "$OUT/runs.tgz" .
