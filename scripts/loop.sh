#!/usr/bin/env bash
# The ScoreFlow loop for one dataset: for epoch i = 0 .. EPOCHS-1 generate, evaluate and
# optimize (which writes epoch i+1's adapter); then inference with epoch EPOCHS's generator
# on the test split, and the report of the workspace.
#
#   scripts/loop.sh DATASET [EPOCHS] [CONFIG] [KEY=VALUE ...]
#
#   scripts/loop.sh HumanEval 2                              # the paper: epochs 0, 1; inference at epoch 2
#   scripts/loop.sh HumanEval 2 config/tiny.yaml             # the embedded CPU setting
#   scripts/loop.sh GSM8K 2 config/scoreflow.yaml training.loss=dpo workspace=runs/dpo
#
# KEY=VALUE pairs become --set overrides of every stage. The loop stops at the first
# failing stage (its exit status is the loop's); run it again to resume: finished stages
# are skipped (a stage finished under a different config stops the loop instead) and an
# interrupted stage continues from its records.
#
# Environment: PYTHON (default python3); LAUNCH, the optimize launcher (default
# "accelerate launch --num_processes=1 --num_cpu_threads_per_process=$OMP_NUM_THREADS or
# nproc"; e.g. LAUNCH="accelerate launch --num_processes=8" on 8 GPUs, LAUNCH=python3).
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    [[ $# -lt 1 ]] && exit 2 || exit 0
fi

dataset=$1
epochs=${2:-2}
config=${3:-config/scoreflow.yaml}
shift $(( $# < 3 ? $# : 3 ))

if ! [[ $epochs =~ ^[0-9]+$ ]]; then
    echo "error: loop.sh: EPOCHS must be a whole number (got '$epochs')" >&2
    exit 2
fi
if [[ ! -f $config ]]; then
    echo "error: loop.sh: config file '$config' not found" >&2
    exit 2
fi

config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")  # the loop runs from the repository root
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
# accelerate runs a CPU process on 1 thread unless told otherwise (OMP_NUM_THREADS decides).
read -r -a launch <<< "${LAUNCH:-accelerate launch --num_processes=1 --num_cpu_threads_per_process=${OMP_NUM_THREADS:-$(nproc)}}"
common=(--config "$config" --dataset "$dataset")
for item in "$@"; do
    if [[ $item != *=* ]]; then
        echo "error: loop.sh: expected KEY=VALUE overrides after the config (got '$item')" >&2
        exit 2
    fi
    common+=(--set "$item")
done

stage() {  # stage LABEL COMMAND...: run one stage, stop the loop if it fails
    local label=$1
    shift
    echo "== $dataset: $label"
    local status=0
    "$@" || status=$?
    if ((status != 0)); then
        echo "error: loop.sh: $dataset: $label failed (exit $status); fix it and run the same command again to resume" >&2
        exit "$status"
    fi
}

for ((epoch = 0; epoch < epochs; epoch++)); do
    stage "generate, epoch $epoch" "$python" generate.py "${common[@]}" --task optimize --epoch "$epoch" --skip-finished
    stage "evaluate, epoch $epoch" "$python" evaluate.py "${common[@]}" --task optimize --epoch "$epoch" --skip-finished
    stage "optimize, epoch $epoch -> $((epoch + 1))" "${launch[@]}" optimize.py "${common[@]}" --epoch "$epoch" --skip-finished
done
stage "inference generate, epoch $epochs" "$python" generate.py "${common[@]}" --task inference --epoch "$epochs" --skip-finished
stage "inference evaluate, epoch $epochs" "$python" evaluate.py "${common[@]}" --task inference --epoch "$epochs" --skip-finished

report_args=(--config "$config")
for item in "$@"; do report_args+=(--set "$item"); done
stage "report" "$python" -m scoreflow.report "${report_args[@]}"
