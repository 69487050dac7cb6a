#!/usr/bin/env bash
# The GPU path, checked on a machine with a CUDA GPU, in one go (a few minutes):
#   1. the policy update on cuda against the same machine's CPU (benchmarks/policy_update.py; rows in runtime.csv);
#   2. a short HalfCheetah-v5 run in the Ray runtime, whose learners take the GPU (`resources.learner_gpus: auto`)
#      (benchmarks/learning.py; rows in learning.csv; it prints where the learners computed and their ms per update);
#   3. the tests that run learners in Ray actors (there they compute on cuda), and the core's.
# Each step has its own time limit and the next runs whatever happened; logs go to OUTDIR, with the result CSVs.
#
#     bash benchmarks/gpu_check.sh [OUTDIR] [HALFCHEETAH_MINUTES (0: skip)] [TEST_SECONDS]
#
# On an H200 with 16 cores (2026-12-04) steps 1-2 took 43 s and 216 s (3 minutes of HalfCheetah); 266 of the 288
# tests of step 3 passed within 190 s (none failed); the rest had not ended. Give the tests 400 s or more.
#
# PYTHON (default: .venv/bin/python if there, else python3) must have this project's requirements.
set -u
cd "$(dirname "$0")/.."
out=${1:-gpu_check}
minutes=${2:-4}
test_s=${3:-240}
mkdir -p "$out"
py=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME SECONDS COMMAND...: run it under a limit, log to OUTDIR/NAME.log, say how it ended
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - started)) s"
    tail -n 25 "$out/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$py -c "import torch, ray, mujoco, gymnasium, mlflow; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'ray', ray.__version__, 'mujoco', mujoco.__version__, 'gymnasium', gymnasium.__version__, 'mlflow', mlflow.__version__)"
nproc

step policy_update_cuda 150 $py benchmarks/policy_update.py --env halfcheetah --device cuda
step policy_update_cuda_hopper 150 $py benchmarks/policy_update.py --env hopper --device cuda
step policy_update_cpu 150 $py benchmarks/policy_update.py --env halfcheetah --device cpu --threads 1
[ "$minutes" != 0 ] && step halfcheetah_ray $((minutes * 60 + 90)) $py benchmarks/learning.py --env halfcheetah --runtime ray --seeds 0 \
    --steps 10000 --set train.eval_every=2500 --minutes "$minutes" --name "shipped, learners on cuda"
parallel=$($py -c "import xdist" 2>/dev/null && echo "-n 8 --dist loadfile")  # pytest-xdist, where installed
# -v: a line per test as it ends, so a cut-off log still says which ran; a test past 150 s fails with its stack
step tests "$test_s" $py -m pytest -v -rfE -p no:cacheprovider $parallel --timeout 150 --durations=20 \
    tests/e2e tests/test_devices.py tests/runtime tests/objectives tests/models tests/data
cp benchmarks/results/runtime.csv benchmarks/results/learning.csv "$out/"
