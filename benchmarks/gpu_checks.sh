#!/usr/bin/env bash
# The checks that need a CUDA GPU, which CI never has: run them on a machine with one before a
# release, or when one is at hand.
#
#   bash benchmarks/gpu_checks.sh [OUTPUT_DIR [STEP ...]]   (default: gpu-checks/, every step)
#
# msclip must be importable with its dependencies (`pip install -e .`). In order, each with its
# own time limit so that one hang cannot take the others' time, and each writing its log to
# OUTPUT_DIR:
#   machine.txt   the GPU, driver, torch and CUDA versions (nvidia-smi, torch), and whether bf16
#                 on its CPU agrees with float32 (benchmarks/cpu_bf16.py: GPU machines often
#                 have Xeons with AMX, whose bf16 once disagreed)
#   gpu_tests.txt the tests marked `gpu` (fused contrastive loss and top-k kernels, the GPU
#                 encoding path against the CPU's fp32 embeddings)
#   encode.txt    benchmarks/encode.py --quick --gpu-only: images/s of the image tower on the GPU
#                 in each precision, and end to end from 1,024 GeoTIFF files through the
#                 encoding engine (with and without pinned memory), and the loader alone
#   cpu.txt       benchmarks/encode.py --quick --cpu-only: the same on the machine's CPU, the
#                 end to end reading files between model calls (64 tiles)
#   cpu_readers.txt  the same with 2 DataLoader worker processes reading while the model runs
#                 on the other cores (--threads cores - 2), and 256 tiles: reading ahead pays
#                 only in a steady state (the first batch is read before the model starts; a
#                 16-core Xeon ran bf16 end to end at 0.49 of the model alone on 64 tiles with
#                 reading between model calls, 0.51 with two workers)
#   search.txt    benchmarks/kernels.py (GPU part, 10^6 rows): the fused top-k scan against the
#                 chunked products and a plain matmul + topk, then the contrastive loss kernels
#                 (the largest batch searched for up to passes of 20 s)
#   suite.txt     the whole suite, cores - 4 processes (tests not marked gpu see no GPU, as in CI)
# STEPs name a subset, in that order. On one H200 with 16 cores (2026-12-04): machine 25 s, the
# tests marked gpu 57 s, search about a minute, the whole suite 97 s with 12 processes (the three
# in one call: 229 s with the installation), the CPU and GPU figures of encode.py together six
# to seven minutes (hence the steps encode and cpu apart); with a lease of 15 minutes, a first
# call of `gpu_tests search suite` and a second of `encode cpu` fit, cpu_readers in another.
# The exit status is that of the first check that failed (0: all passed).
set -uo pipefail

out=${1:-gpu-checks}
shift $(($# > 0 ? 1 : 0))
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(machine gpu_tests encode cpu cpu_readers search suite)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
status=0

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to $out/NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): $*"
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    tail -n 5 "$out/$name.txt"
    echo "== $name: exit $rc"
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}

for s in "${steps[@]}"; do
    case $s in
        machine) step machine 120 bash -c "nvidia-smi; $python -c 'import torch; \
print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), \
torch.cuda.get_device_name(0))'; $python benchmarks/cpu_bf16.py" ;;
        gpu_tests) step gpu_tests 300 "$python" -m pytest -q -m gpu -n 0 -p no:cacheprovider tests ;;
        encode) step encode 300 "$python" benchmarks/encode.py --quick --gpu-only ;;
        cpu) step cpu 400 "$python" benchmarks/encode.py --quick --cpu-only ;;
        cpu_readers)
            cores=$(nproc)
            step cpu_readers 400 "$python" benchmarks/encode.py --quick --cpu-only --workers 2 \
                --threads $((cores > 4 ? cores - 2 : cores)) --tiles 256 ;;
        search) step search 300 "$python" benchmarks/kernels.py --skip-cpu \
            --search-sizes 1000000 --gpu-batches 4096 --capacity-seconds 20 ;;
        suite)
            cores=$(nproc)
            step suite 900 "$python" -m pytest -q -p no:cacheprovider \
                -n $((cores > 8 ? cores - 4 : 2)) tests ;;
        *) echo "unknown step '$s' (machine, gpu_tests, encode, cpu, cpu_readers, search, suite)" >&2
           exit 2 ;;
    esac
done
exit "$status"
