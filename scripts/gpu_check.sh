#!/usr/bin/env bash
# Everything the GPU must show, in one prepared command (issue 12).
#
#   scripts/gpu_check.sh build   # here, with cargo: release binaries packed into
#                                # gpu-bundle.tar.gz (ignored; ~23 MB, under the 64 MiB a
#                                # device run carries; the binaries are ~54 MB unpacked)
#   scripts/gpu_check.sh run     # on the GPU machine (no cargo), from the repository root with
#                                # gpu-bundle.tar.gz carried along (unpacked into gpu-bundle/);
#                                # about 6 minutes on an H100/H200 (estimated: never run there)
#   scripts/gpu_check.sh run stall load   # only some parts: tests kernels stall load e2e digits
#
# The whole run keeps within GPU_CHECK_BUDGET_S (default 540 s; a device command may run 600 s):
# each step's limit is cut to the time left, steps that no longer fit are recorded as skipped,
# the JSON and the table are rewritten after every step, and the last line names the parts to
# run next. Exit status: 0 all ran and passed, 1 a step failed or timed out, 2 not set up,
# 3 some steps skipped for lack of time. Checkpoints and bench files go to a temporary folder
# outside $OUT, removed at exit.
#
# `run` finds libtorch through the machine's Python (`import torch`) or the project's venv,
# and runs these parts, in this order, each step under its own time limit:
#   tests    the CUDA tests with LIGHTNING_RS_EXPECT_GPU=1 and LIGHTNING_RS_REQUIRE_PYTHON=1
#            (a missing GPU, kernel or Python anchor is a failure, not a skip): fused kernels
#            (incl. on libtorch's current stream), autocast, lightning-sys's streams and
#            pinned memory, NCCL world size 1 and Gloo on CUDA tensors (two ranks);
#   kernels  the kernel bench (fused AdamW/SGD/unscale/grad-norm vs torch's fused/foreach ops
#            and the device copy bandwidth, same run);
#   stall    the stall bench at ~0.8 GB of model + AdamW state: sync vs async stall vs the
#            pinned device-to-host snapshot;
#   load     the checkpoint bench: load to cuda:0 vs torch.load(map_location="cuda");
#   e2e      the end-to-end GPT bench (ours vs a plain PyTorch loop and Lightning, same weights
#            and batches) in 32-true and bf16-mixed, our fused AdamW vs torch's fused AdamW;
#   digits   digits on --device cuda for 32-true, 16-mixed and bf16-mixed, sync and
#            --async-checkpointing: a straight 3-epoch run against 1 epoch + `--resume last`
#            to 3, compared with `lightning-ckpt diff` (bitwise, then the largest difference).
# It writes $OUT/gpu_check.json (every figure and step status, and the commit the binaries
# were built from), $OUT/gpu_check.md (the summary table) and $OUT/logs.tgz (every step's
# log; a failed step's tail is also printed), with OUT defaulting to gpu-check-out/. On a
# machine without a GPU it says so, runs the CPU parts (the same tests, which then skip their
# GPU halves, and one digits resume comparison on the CPU) and exits 0 when they pass.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUNDLE=gpu-bundle
PACKED=gpu-bundle.tar.gz

build() {
    set -e
    scripts/setup.sh
    rm -rf "$BUNDLE" "$PACKED" && mkdir -p "$BUNDLE"
    local json
    json=$(mktemp)
    cargo build --release --locked --example digits -p lightning-rs --message-format=json >"$json"
    cargo build --release --locked -p lightning-ckpt --message-format=json >>"$json"
    cargo test --release --locked --no-run --message-format=json -p lightning-rs \
        --test optim >>"$json"
    cargo test --release --locked --no-run --message-format=json -p lightning-dist \
        --test single_process --test multiprocess >>"$json"
    cargo test --release --locked --no-run --message-format=json -p lightning-sys --lib \
        >>"$json"
    cargo build --release --locked -p lightning-dist --bin lightning-dist-child \
        --message-format=json >>"$json"
    cargo bench --locked --no-run --message-format=json -p lightning-core \
        --bench optim --bench checkpoint >>"$json"
    cargo bench --locked --no-run --message-format=json -p lightning-rs --bench stall \
        --bench e2e >>"$json"
    # One file per target, named after it; stripped to fit the 64 MiB a device run carries.
    python3 - "$json" "$BUNDLE" <<'PY'
import json, shutil, sys, os
out = sys.argv[2]
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable") if m.get("reason") == "compiler-artifact" else None
    # Binaries built only as dependencies of the tests (test-child) are not run there.
    if exe and m["target"]["name"] not in ("test-child",):
        dst = os.path.join(out, m["target"]["name"])
        shutil.copy2(exe, dst)
        print(f"  {dst} <- {exe}")
PY
    rm -f "$json"
    strip --strip-all "$BUNDLE"/* 2>/dev/null || true
    # What the binaries were built from: `run` prints it and records it with the figures.
    { git rev-parse HEAD; git diff --quiet HEAD -- . ':!gpu-bundle*' || echo "+ uncommitted changes"; } \
        >"$BUNDLE/COMMIT" 2>/dev/null || echo unknown >"$BUNDLE/COMMIT"
    tar czf "$PACKED" "$BUNDLE"
    du -sh "$BUNDLE" "$PACKED"
    echo "built $PACKED; on the GPU machine: scripts/gpu_check.sh run (carry $PACKED)"
}

# ---- run ------------------------------------------------------------------------------------
OUT=${OUT:-gpu-check-out}
# The whole run stays inside this many seconds (a device command may run 600 s at most): each
# step's limit is cut to what is left, and steps that no longer fit are recorded as skipped,
# so the JSON and the table always come back, with the parts to run next time.
BUDGET=${GPU_CHECK_BUDGET_S:-540}
# Figures first, then the 18 short digits runs: what a budget cuts short is the cheapest to rerun.
PARTS_ALL="tests kernels stall load e2e digits"
# The bundled test binaries (lightning_sys: its unit tests, libtorch's streams and pinned memory).
TEST_BINS="optim lightning_sys single_process multiprocess"
# The tests a bundled binary runs here (libtest name filters; none: all of its tests): of the
# `optim` binary (tests/optim/), the CUDA kernels and autocast.
test_filter() {
    case $1 in optim) echo "cuda_kernels:: precision::" ;; esac
}
RESULTS=()   # JSON objects, one per step or figure
FAILED=0     # steps that failed or timed out
SKIPPED=()   # parts with a step skipped for lack of time
PART=""      # the part running now
LOGS=""      # the steps' logs (in $SCRATCH; packed into $OUT/logs.tgz)
SCRATCH=""   # checkpoints and bench files: outside $OUT, so a killed run sends back no GiBs

json_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }

# record NAME STATUS SECONDS [EXTRA-JSON-FIELDS]
record() {
    RESULTS+=("{\"step\": $(json_str "$1"), \"part\": \"$PART\", \"status\": \"$2\", \"seconds\": $3${4:+, $4}}")
    case $2 in FAIL | timeout) FAILED=$((FAILED + 1)) ;; esac
    printf '%-58s %-7s %6ss\n' "$1" "$2" "$3"
    write_results   # after every step: a run cut short still leaves its figures
}

# step NAME LIMIT LOG CMD...: runs CMD under a time limit (cut to the budget left), logs to
# $LOGS/LOG (packed into $OUT/logs.tgz: a device run sends back at most 8 files), and prints
# the log's tail when it fails; skipped (status 3) when under 20 s of the budget are left.
step() {
    local name=$1 limit=$2 logname=$3 log=$LOGS/$3
    shift 3
    local left=$((BUDGET - SECONDS - 10))
    if [ "$left" -lt 20 ]; then
        record "$name" skipped 0 "\"why\": \"budget of ${BUDGET}s spent\""
        case " ${SKIPPED[*]} " in *" $PART "*) ;; *) SKIPPED+=("$PART") ;; esac
        return 3
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    local status=ok
    [ $rc -eq 124 ] && status=timeout
    [ $rc -ne 0 ] && [ $rc -ne 124 ] && status=FAIL
    [ "$status" != ok ] && tail -n 30 "$log" | sed 's/^/    | /'
    record "$name" "$status" $((SECONDS - t0)) "\"log\": $(json_str "logs/$logname")"
    return $rc
}

find_libtorch() {
    local py lib
    for py in python3 .venv/bin/python; do
        lib=$("$py" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null) || continue
        [ -f "$lib/libtorch_cpu.so" ] && { PYTHON=$py; TORCH_LIB=$lib; return 0; }
    done
    return 1
}

digits_pair() {   # precision, extra flag ("" or --async-checkpointing), device (default cuda)
    local prec=$1 extra=$2 device=${3:-cuda} tag root a b
    tag="digits-$device-$prec${extra:+-async}"
    root=$SCRATCH/runs/$tag
    a=$SCRATCH/runs/$tag-straight.ckpt
    local common=(--device "$device" --precision "$prec" --seed 7 --root "$root" $extra)
    rm -rf "$root"
    step "$tag: 3 epochs straight" 300 "$tag-straight.log" \
        "$BUNDLE/digits" "${common[@]}" --max-epochs 3 || return
    cp "$root/checkpoints/last.ckpt" "$a"
    rm -rf "$root"
    step "$tag: 1 epoch" 300 "$tag-first.log" "$BUNDLE/digits" "${common[@]}" --max-epochs 1 || return
    step "$tag: --resume last to 3" 300 "$tag-resume.log" \
        "$BUNDLE/digits" "${common[@]}" --max-epochs 3 --resume last || return
    b=$root/checkpoints/last.ckpt
    local t0=$SECONDS verdict
    # The wall-clock training time is the one entry a resumed run never shares.
    if "$BUNDLE/lightning-ckpt" diff "$a" "$b" --ignore lightning_rs.train_time_s \
        >"$LOGS/$tag-diff.log" 2>&1; then
        verdict=bitwise
    else
        verdict=differs
    fi
    local maxdiff
    maxdiff=$(grep -o 'max abs diff [0-9.e+-]*' "$LOGS/$tag-diff.log" | awk '{print $4}' | sort -g | tail -1)
    record "$tag: straight vs resumed" "$verdict" $((SECONDS - t0)) \
        "\"figure\": \"resume\", \"max_abs_diff\": $(json_str "${maxdiff:-0}")"
    rm -rf "$root" "$a"
}

# The parts, in the order a run takes them (`run PART...` picks some, in this order).
part_tests() {
    local t rc
    for t in $TEST_BINS; do
        # shellcheck disable=SC2046 # the filters are words
        step "tests $t (LIGHTNING_RS_EXPECT_GPU=1)" 300 "test-$t.log" "$BUNDLE/$t" $(test_filter "$t")
        rc=$?
        # The distributed tests once more (when they failed, not when skipped for time)
        # without NCCL's cuMem allocations, which a sandboxed GPU may not support: saves a
        # second device call to find out.
        [ $rc -eq 0 ] || [ $rc -eq 3 ] && continue
        case $t in single_process | multiprocess)
            step "tests $t again, NCCL_CUMEM_ENABLE=0" 300 "test-$t-nocumem.log" \
                env NCCL_CUMEM_ENABLE=0 "$BUNDLE/$t" ;;
        esac
    done
}
part_digits() {
    local prec
    for prec in 32-true 16-mixed bf16-mixed; do
        digits_pair "$prec" ""
        digits_pair "$prec" --async-checkpointing
    done
}
part_kernels() {
    step "kernel bench (release)" 240 bench-optim.log \
        env OPTIM_ANCHOR_SCRIPT=lightning-core/benches/optim_anchor.py "$BUNDLE/optim" --bench
}
part_stall() {
    step "stall bench, cuda, ~0.8 GB" 300 bench-stall.log \
        "$BUNDLE/stall" --bench --device cuda --hidden 3400 --dir "$SCRATCH/stall"
    rm -rf "$SCRATCH/stall"
}
part_load() {
    step "checkpoint bench, load to cuda" 300 bench-checkpoint.log \
        env CKPT_BENCH_DIR="$SCRATCH/ckpt" "$BUNDLE/checkpoint" --bench
    rm -rf "$SCRATCH/ckpt"
}
part_e2e() {
    local prec
    for prec in 32-true bf16-mixed; do
        step "e2e GPT bench, cuda, $prec" 300 "bench-e2e-$prec.log" \
            "$BUNDLE/e2e" --bench --device cuda --precision "$prec" --batch 16 --steps 30
    done
}

run() {
    local parts=("$@") p
    [ ${#parts[@]} -eq 0 ] && read -r -a parts <<<"$PARTS_ALL"
    for p in "${parts[@]}"; do
        case " $PARTS_ALL " in
            *" $p "*) ;;
            *) echo "unknown part '$p'; the parts are: $PARTS_ALL" >&2; exit 2 ;;
        esac
    done
    mkdir -p "$OUT"
    if [ -f "$PACKED" ]; then
        rm -rf "$BUNDLE" && tar xzf "$PACKED" || { echo "cannot unpack $PACKED"; exit 2; }
    fi
    [ -x "$BUNDLE/digits" ] || { echo "no $BUNDLE/: run 'scripts/gpu_check.sh build' first (here, with cargo)"; exit 2; }
    if ! find_libtorch; then
        echo "no Python with torch found (python3 or .venv/bin/python)"
        exit 2
    fi
    SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
    LOGS=$SCRATCH/logs
    mkdir -p "$LOGS"
    trap 'rm -rf "$SCRATCH"' EXIT
    local built
    built=$(tr '\n' ' ' <"$BUNDLE/COMMIT" 2>/dev/null || echo unknown)
    export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LIGHTNING_RS_PYTHON=$PYTHON LIGHTNING_DIST_CHILD=$PWD/$BUNDLE/lightning-dist-child
    local gpu lightning
    gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
    # The e2e bench's Lightning anchor needs it; the machine may not have it (and no network).
    lightning=$("$PYTHON" -c 'import lightning; print(lightning.__version__)' 2>/dev/null || echo "not installed")
    echo "gpu_check: GPU: ${gpu:-none}; torch lib: $TORCH_LIB; python: $PYTHON; lightning: $lightning; binaries built from: $built; budget ${BUDGET}s"
    RESULTS+=("{\"gpu\": $(json_str "${gpu:-none}"), \"torch_lib\": $(json_str "$TORCH_LIB"), \"lightning\": $(json_str "$lightning"), \"built_from\": $(json_str "$built"), \"parts\": $(json_str "${parts[*]}"), \"budget_s\": $BUDGET}")

    if [ -z "$gpu" ]; then
        echo "gpu_check: no GPU on this machine: running the CPU parts only (GPU halves skip)"
        PART=tests
        for t in $TEST_BINS; do
            # shellcheck disable=SC2046 # the filters are words
            step "tests $t (CPU parts)" 300 "test-$t.log" "$BUNDLE/$t" $(test_filter "$t")
        done
        # The resume comparison once on the CPU, so the pipeline itself is known to work.
        PART=digits
        digits_pair 32-true --async-checkpointing cpu
    else
        # Missing GPU, kernels or Python anchors fail a step instead of skipping inside it;
        # NCCL says why it fails.
        export LIGHTNING_RS_EXPECT_GPU=1 LIGHTNING_RS_REQUIRE_PYTHON=1 NCCL_DEBUG=${NCCL_DEBUG:-WARN}
        for p in "${parts[@]}"; do
            PART=$p
            "part_$p"
        done
    fi
    finish
    [ "$FAILED" -gt 0 ] && { echo "gpu_check: $FAILED step(s) failed or timed out (see the logs)"; exit 1; }
    [ ${#SKIPPED[@]} -gt 0 ] && exit 3
    exit 0
}

# Writes $OUT/gpu_check.json and $OUT/gpu_check.md from what has run so far.
write_results() {
    {
        printf '[\n'
        local i
        for i in "${!RESULTS[@]}"; do
            printf '  %s%s\n' "${RESULTS[$i]}" "$([ "$i" -lt $((${#RESULTS[@]} - 1)) ] && echo ,)"
        done
        printf ']\n'
    } >"$OUT/gpu_check.json.tmp" && mv "$OUT/gpu_check.json.tmp" "$OUT/gpu_check.json"
    {
        echo "| step | status | seconds |"
        echo "|---|---|---|"
        python3 - "$OUT/gpu_check.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    if "gpu" in r:
        print(f"| GPU: {r['gpu']}; lightning {r['lightning']}; built from {r['built_from']} | parts: {r['parts']} | budget {r['budget_s']} |")
    elif "step" in r:
        extra = f" (max abs diff {r['max_abs_diff']})" if r.get("status") == "differs" else ""
        print(f"| {r['step']} | {r['status']}{extra} | {r['seconds']} |")
PY
        # The benches' own ratio lines, as they print them.
        for f in "$LOGS"/bench-*.log; do
            [ -f "$f" ] || continue
            echo
            echo "${f##*/}:"
            # (A log without such lines must not fail the block: pipefail would skip the mv.)
            grep -E 'x |ratio|GB/s|stall|goal' "$f" | tail -25 | sed 's/^/    /' || true
        done
    } >"$OUT/gpu_check.md.tmp"
    mv "$OUT/gpu_check.md.tmp" "$OUT/gpu_check.md"
    tar czf "$OUT/logs.tgz.tmp" -C "$SCRATCH" logs && mv "$OUT/logs.tgz.tmp" "$OUT/logs.tgz"
}

finish() {
    write_results
    cat "$OUT/gpu_check.md"
    echo "figures: $OUT/gpu_check.json; logs: $OUT/logs.tgz"
    if [ ${#SKIPPED[@]} -gt 0 ]; then
        echo "gpu_check: out of time (GPU_CHECK_BUDGET_S=$BUDGET); to finish: scripts/gpu_check.sh run ${SKIPPED[*]}"
    fi
}

case "${1:-}" in
    build) build ;;
    run)
        shift
        run "$@"
        ;;
    *)
        echo "usage: scripts/gpu_check.sh build | run [$PARTS_ALL]" >&2
        exit 2
        ;;
esac
