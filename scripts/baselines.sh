#!/usr/bin/env bash
# Table 1's baseline rows for one dataset: IO, CoT, CoT-SC, MedPrompt, MultiPersona and
# Self-Refine, each a fixed workflow (benchmarks/baselines/) scored on the test split as
# ScoreFlow's inference is (evaluate.py --task inference --baseline NAME), then the report.
# GSM8K and MATH also run `aflow`, the graph AFlow publishes for them.
#
#   scripts/baselines.sh DATASET [CONFIG] [KEY=VALUE ...]
#
#   scripts/baselines.sh HumanEval                           # the paper's executor (gpt-4o-mini)
#   scripts/baselines.sh HumanEval config/tiny.yaml          # the embedded CPU setting
#
# KEY=VALUE pairs become --set overrides. Each baseline writes
# <workspace>/<DATASET>/baselines/<name>/; a finished one is skipped (one finished under a
# different config stops the script), an interrupted one resumes from its records and
# reply cache: run the same command again. scripts/loop.sh does not run the baselines.
#
# Environment: PYTHON (default python3).
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    [[ $# -lt 1 ]] && exit 2 || exit 0
fi

dataset=$1
config=${2:-config/scoreflow.yaml}
shift $(( $# < 2 ? $# : 2 ))

if [[ ! -f $config ]]; then
    echo "error: baselines.sh: config file '$config' not found" >&2
    exit 2
fi
config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
sets=()
for item in "$@"; do
    if [[ $item != *=* ]]; then
        echo "error: baselines.sh: expected KEY=VALUE overrides after the config (got '$item')" >&2
        exit 2
    fi
    sets+=(--set "$item")
done

names=(io cot cot_sc medprompt multipersona self_refine)
case $dataset in GSM8K | MATH) names+=(aflow) ;; esac  # AFlow's published graph (docs/baselines.md)
for name in "${names[@]}"; do
    echo "== $dataset: baseline $name"
    status=0
    "$python" evaluate.py --config "$config" --dataset "$dataset" --task inference --baseline "$name" \
        --skip-finished "${sets[@]}" || status=$?
    if ((status != 0)); then
        echo "error: baselines.sh: $dataset: baseline $name failed (exit $status); fix it and run the same command again to resume" >&2
        exit "$status"
    fi
done
echo "== report"
"$python" -m scoreflow.report --config "$config" "${sets[@]}"
