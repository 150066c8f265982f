#!/usr/bin/env bash
# The one script for a lent GPU machine (the session's device tool), run from the
# repository root with OUT set:
#
#   OUT=/some/dir bash benchmarks/run_gpu.sh
#
# It installs the wheels in .devwheels/ (tyro, docstring_parser, typeguard, mnist1d:
# the device image lacks them and has no network), prints nvidia-smi and
# jax.devices(), then runs, each under `timeout`:
#   (a) benchmarks/step_overhead.py        -> $OUT/step_overhead_gpu.json
#   (b) benchmarks/vmap_tickets.py         -> $OUT/vmap_tickets_gpu.json
#   (c) benchmarks/train_vs_torch.py --torch-device cuda -> $OUT/train_vs_torch_gpu.json
#   (d) lotto imp --recipe mnist1d-lottery --rounds 2 --timing, then lotto report
#       -> $OUT/imp_gpu_metrics.json (every metrics.json of the run, by path)
#   (e) a pytest selection of the GPU-relevant tests, on the GPU
# Everything is tee'd into $OUT/gpu_log.txt; a step that fails or times out is
# named at the end and the script still exits 0, so the other results come back.
#
# Time: the steps share a budget of GPU_BUDGET_S seconds (default 420: 7 minutes);
# each runs under min(its own cap, what is left less what the pytest step keeps
# for itself), and a step with under 10 s left is skipped.
#
# GPU_STEPS=LETTERS runs only those steps (default abcde).
# GPU_SMOKE=1: a dry run on any machine (CPU too): no pip install, no nvidia-smi,
# --quick and tiny sizes everywhere, torch on the CPU, a small pytest selection,
# the interpreter .venv/bin/python when there is one. Only to catch the script's
# own bugs; its figures mean nothing.
set -u
cd "$(dirname "$0")/.."
: "${OUT:?OUT must name the folder for the results}"
mkdir -p "$OUT"
SMOKE=${GPU_SMOKE:-0}
if [ "$SMOKE" = 1 ] && [ -z "${PY:-}" ] && [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
fi
PY=${PY:-python3}
BUDGET=${GPU_BUDGET_S:-$([ "$SMOKE" = 1 ] && echo 300 || echo 420)}
PYTEST_KEEP=$([ "$SMOKE" = 1 ] && echo 60 || echo 130)  # seconds kept for (e)
IMP_DIR=${IMP_DIR:-/tmp/imp_gpu}
STEPS=${GPU_STEPS:-abcde}  # the steps to run, by letter (a rerun of some: GPU_STEPS=ce)
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

START=$SECONDS
RESULTS=()

# step NAME CAP KEEP CMD...: runs CMD under timeout min(CAP, left - KEEP).
step() {
    local name=$1 cap=$2 keep=$3
    shift 3
    if [[ $STEPS != *"${name:0:1}"* ]]; then
        RESULTS+=("$name: not selected (GPU_STEPS=$STEPS)")
        return
    fi
    local left=$((BUDGET - (SECONDS - START)))
    local t=$((left - keep < cap ? left - keep : cap))
    if ((t < 10)); then
        echo "### SKIPPED $name: ${left} s of the ${BUDGET} s budget left"
        RESULTS+=("$name: SKIPPED (budget)")
        return
    fi
    echo
    echo "### $name (timeout ${t} s, $((SECONDS - START)) s into the run): $*"
    local t0=$SECONDS rc
    timeout -k 5 "$t" "$@"
    rc=$?
    local took=$((SECONDS - t0))
    if ((rc == 0)); then
        RESULTS+=("$name: ok (${took} s)")
    elif ((rc == 124 || rc == 137)); then
        RESULTS+=("$name: TIMED OUT after ${took} s (limit ${t} s)")
    else
        RESULTS+=("$name: FAILED rc=$rc (${took} s)")
    fi
    echo "### $name: rc=$rc, ${took} s"
}

# the `lotto` console script without installing the package (timeout needs a program)
LOTTO=("$PY" -c 'import sys; from lotto_jax.runs.cli import main; sys.exit(main())')

collect_imp() {  # every metrics.json of the IMP run in one file, keyed by path
    "$PY" - "$IMP_DIR" "$OUT/imp_gpu_metrics.json" <<'EOF'
import json, os, sys
root, dest = sys.argv[1], sys.argv[2]
out = {}
for d, _, files in os.walk(root):
    for f in files:
        if f in ("metrics.json", "config.json"):
            p = os.path.join(d, f)
            try:
                out[os.path.relpath(p, root)] = json.load(open(p))
            except (OSError, ValueError) as e:
                out[os.path.relpath(p, root)] = f"unreadable: {e}"
json.dump(out, open(dest, "w"), indent=1, default=str)
print(f"{len(out)} files of {root} -> {dest}")
EOF
}

main() {
    echo "== run_gpu.sh: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), smoke=$SMOKE, budget ${BUDGET} s, python $PY"
    git log -1 --format='commit %H %s' 2>/dev/null || true
    git status --short 2>/dev/null | head -20

    if [ "$SMOKE" != 1 ]; then
        echo "### pip install .devwheels/*.whl"
        if ! timeout 60 "$PY" -m pip install -q --no-deps --no-index --no-cache-dir .devwheels/*.whl; then
            echo "### pip install into the environment failed: --target /tmp/pylib"
            timeout 60 "$PY" -m pip install -q --no-deps --no-index --no-cache-dir \
                --target /tmp/pylib .devwheels/*.whl &&
                export PYTHONPATH=/tmp/pylib:$PYTHONPATH
        fi
        nvidia-smi || echo "(nvidia-smi failed)"
    fi
    timeout 90 "$PY" - <<'EOF' || echo "(the environment check failed)"
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
for name in ("tyro", "mnist1d", "typeguard", "docstring_parser", "flax", "optax",
             "orbax.checkpoint", "chex"):
    try:
        m = importlib.import_module(name)
        print(f"  {name} {getattr(m, '__version__', '')}")
    except Exception as e:  # noqa: BLE001
        print(f"  {name}: NOT IMPORTABLE ({type(e).__name__}: {e})")
import jax
print("jax", jax.__version__, "backend", jax.default_backend(), "devices", jax.devices())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda,
          "available", torch.cuda.is_available())
except ImportError as e:
    print("torch: not importable", e)
EOF

    local quick=() overhead=() vmap=() torch_dev=cuda imp_extra=() tests
    tests=(tests/test_train.py tests/test_sparse.py tests/test_masks.py
        tests/test_prune.py tests/test_sharding.py)
    local xdist=(-n 4)
    if [ "$SMOKE" = 1 ]; then
        quick=(--quick --repeats 1)
        overhead=(--no-breakdown --steps 10 --chunk 20)
        vmap=(--ks 1)
        torch_dev=cpu
        imp_extra=(--steps 20 --eval-every 10)
        tests=(tests/test_masks.py)
        xdist=(-n 1)
    fi

    # (a) full run: ~8 per-step variants (200-step blocks) and 6 chunk variants
    # (500-step scans), 11 repeats; on a GPU mostly compile time (~15 jits).
    step "a step_overhead" 110 "$PYTEST_KEEP" \
        "$PY" benchmarks/step_overhead.py "${quick[@]}" "${overhead[@]}" --json "$OUT/step_overhead_gpu.json"
    # (b) K = 1, 2, 4, 8: a vmapped compile (and 2 memory-analysis compiles) per K.
    step "b vmap_tickets" 80 "$PYTEST_KEEP" \
        "$PY" benchmarks/vmap_tickets.py "${quick[@]}" "${vmap[@]}" --json "$OUT/vmap_tickets_gpu.json"
    # (c) torch blocks capped at 2.5 s each (--torch-block-s), 5 repeats.
    step "c train_vs_torch" 90 "$PYTEST_KEEP" \
        "$PY" benchmarks/train_vs_torch.py "${quick[@]}" --torch-device "$torch_dev" \
        --json "$OUT/train_vs_torch_gpu.json"
    # (d) the IMP loop: rounds 0-2, 3 replicates + a random control, 1500 steps each.
    [[ $STEPS == *d* ]] && rm -rf "$IMP_DIR"
    step "d imp (mnist1d-lottery, 2 rounds, --timing)" 100 "$PYTEST_KEEP" \
        "${LOTTO[@]}" imp --recipe mnist1d-lottery --rounds 2 --timing --out "$IMP_DIR" "${imp_extra[@]}"
    step "d report" 40 "$PYTEST_KEEP" "${LOTTO[@]}" report "$IMP_DIR" --figures /tmp/imp_gpu_figures
    if [[ $STEPS == *d* ]]; then
        collect_imp || echo "(collecting the IMP metrics failed)"
    fi
    # (e) the tests on the GPU: 4 workers, each allocating GPU memory as needed
    # (JAX would otherwise take 75 % of it in each process). --maxfail=5, not -x:
    # one failure (the checkout may be mid-change) should not hide the others.
    XLA_PYTHON_CLIENT_PREALLOCATE=false step "e pytest" 150 0 \
        "$PY" -m pytest -q --maxfail=5 -p no:cacheprovider "${xdist[@]}" --durations=10 \
        "${tests[@]}"

    echo
    echo "== summary ($((SECONDS - START)) s of the ${BUDGET} s budget):"
    printf '  %s\n' "${RESULTS[@]}"
    ls -l "$OUT"
}

main 2>&1 | tee "$OUT/gpu_log.txt"
exit 0
