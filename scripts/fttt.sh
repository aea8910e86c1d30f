#!/usr/bin/env bash
# FTTT on one dataset: prepare the test split if it is missing, the hard-question filter
# (greedy), then every method for every seed of the config, then the report.
#
#   scripts/fttt.sh DATASET [CONFIG] [KEY=VALUE ...]
#
#   scripts/fttt.sh GSM8K                               # the paper's setting (config/fttt.yaml)
#   scripts/fttt.sh HumanEval config/fttt_tiny.yaml     # the CPU setting
#   scripts/fttt.sh GSM8K config/fttt.yaml model.dtype=bfloat16 workspace=runs/bf16
#
# DATASET: MATH500, GSM8K, MBPP or HumanEval. Methods: revision, beam_search, best_of_n,
# self_refine, self_consistency, fttt, fttt_plus; the deterministic revision and
# beam_search run with the config's first seed only. KEY=VALUE pairs become --set
# overrides of every command. The loop stops at the first failing command (its exit
# status is the loop's); run it again to resume: finished runs are skipped (a run
# finished under a different config stops the loop instead) and an interrupted run
# continues from its records. Environment: PYTHON (default python3).
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

if [[ $# -lt 1 ]]; then
    usage >&2
    exit 2
fi
if [[ $1 == -h || $1 == --help ]]; then
    usage
    exit 0
fi

dataset=$1
config=${2:-config/fttt.yaml}
shift $(( $# < 2 ? $# : 2 ))

case $dataset in
    MATH500 | GSM8K | MBPP | HumanEval) ;;
    *)
        echo "error: fttt.sh: unknown dataset '$dataset' (expected MATH500, GSM8K, MBPP or HumanEval)" >&2
        echo "usage: scripts/fttt.sh DATASET [CONFIG] [KEY=VALUE ...] (--help for more)" >&2
        exit 2
        ;;
esac
if [[ ! -f $config ]]; then
    echo "error: fttt.sh: config file '$config' not found" >&2
    exit 2
fi
sets=()
for item in "$@"; do
    if [[ $item != *=* ]]; then
        echo "error: fttt.sh: expected KEY=VALUE overrides after the config (got '$item')" >&2
        exit 2
    fi
    sets+=(--set "$item")
done

config=$(cd "$(dirname "$config")" && pwd)/$(basename "$config")  # the loop runs from the repository root
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
common=(--config "$config" "${sets[@]}")

stage() {  # stage LABEL COMMAND...: run one command, stop the loop if it fails
    local label=$1
    shift
    echo "== $dataset: $label"
    local status=0
    "$@" || status=$?
    if ((status != 0)); then
        echo "error: fttt.sh: $dataset: $label failed (exit $status);" \
            "fix it and run the same command again to resume" >&2
        exit "$status"
    fi
}

# The seeds and the data folder, as the config (with the overrides) says; a bad config
# fails here with the loader's one-line error.
settings=$("$python" -c '
import sys
from fttt.config import load_fttt_config
from scoreflow.errors import ScoreFlowError
try:
    c = load_fttt_config(sys.argv[1], sys.argv[2:])
except ScoreFlowError as exc:
    sys.exit(f"error: {exc}")
print(c.data_dir)
print(" ".join(map(str, c.seeds)))
' "$config" "${@}") || { echo "error: fttt.sh: cannot read the config '$config'" >&2; exit 2; }
data_dir=$(sed -n 1p <<< "$settings")
read -r -a seeds <<< "$(sed -n 2p <<< "$settings")"
if ((${#seeds[@]} == 0)); then
    echo "error: fttt.sh: the config's seeds list is empty" >&2
    exit 2
fi

if [[ ! -f $data_dir/$dataset/manifest.json ]]; then
    stage "prepare the test split" "$python" -m data.prepare --suite fttt --dataset "$dataset" "${common[@]}"
fi
stage "hard-question filter (greedy)" "$python" -m fttt.hard --dataset "$dataset" "${common[@]}" --skip-finished
for method in revision beam_search best_of_n self_refine self_consistency fttt fttt_plus; do
    method_seeds=("${seeds[@]}")
    if [[ $method == revision || $method == beam_search ]]; then
        method_seeds=("${seeds[0]}")  # deterministic (T = 0): one seed is the whole result
    fi
    for seed in "${method_seeds[@]}"; do
        stage "$method, seed $seed" "$python" -m fttt.run --method "$method" --dataset "$dataset" --seed "$seed" \
            "${common[@]}" --skip-finished
    done
done
stage "report" "$python" -m fttt.report "${common[@]}"
