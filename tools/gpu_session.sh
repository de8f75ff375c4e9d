#!/usr/bin/env bash
# One device-machine session, time-boxed for a 15-minute lease: build with
# CUDA, then the checks only a GPU can run, most important first, each under
# its own timeout so one hang cannot eat the rest:
#   1. the error paths (every extension error raised, none a SIGSEGV: issue 16)
#      and the CUDA parity tests (test_cuda, test_amp, test_bad_input, ...);
#   2. the low-precision modes and 8-bit states on CUDA, bitwise against the CPU;
#   3. FSDP2/DTensor on one NCCL rank;
#   4. benchmarks/gpu_precision.py on 1B params (bytes, GB/s, share of copy);
#   5. the whole suite with xdist, whatever time is left.
# Usage: tools/gpu_session.sh [all|tests|bench] (default all). Logs go to $OUT
# (or ./gpu-out); the summary lines are printed.
set -uo pipefail
what=${1:-all}
out=${OUT:-gpu-out}
mkdir -p "$out"
export FUSEDOPT_CUDA_MODES=1 PYTHONUNBUFFERED=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FUSEDOPT_CUDA=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
start=$(date +%s)
python3 -m pip install -q --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1 \
  || { tail -40 "$out/build.log"; echo "BUILD FAILED"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
python3 -c "import fusedopt, json; print(json.dumps(fusedopt.info()))"
pytest() { python3 -m pytest -q -p no:cacheprovider "$@"; }
if [ "$what" = all ] || [ "$what" = tests ]; then
  python3 - <<'PY' 2>&1 | tee "$out/errors.log"
import torch, fusedopt
for what, call in [("traffic_ cpu lists", lambda: torch.ops.fusedopt.traffic_([torch.zeros(2)], [], [], [], [])),
                   ("traffic_ cuda lists", lambda: torch.ops.fusedopt.traffic_([torch.zeros(2, device="cuda")], [], [], [], []))]:
    try:
        call()
        print(what, ": no error")
    except Exception as e:
        print(what, ": raised", type(e).__name__, str(e).splitlines()[0][:150])
PY
  timeout 150 bash -c 'python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_amp.py tests/test_bad_input.py tests/test_binary.py' 2>&1 \
    | tee "$out/test_cuda.log" | tail -12
  timeout 120 bash -c 'python3 -m pytest -q -p no:cacheprovider -x tests/test_cuda_precision.py' 2>&1 \
    | tee "$out/test_cuda_precision.log" | tail -25
  timeout 90 bash -c 'python3 -m pytest -q -p no:cacheprovider tests/test_distributed.py -k nccl' 2>&1 \
    | tee "$out/test_nccl.log" | tail -8
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
  timeout 100 python3 -m benchmarks.gpu_precision --numel $((1 << 30)) 2>&1 | tee "$out/gpu_precision.txt"
fi
if [ "$what" = all ] || [ "$what" = tests ]; then
  left=$(( 470 - ($(date +%s) - start) ))
  echo "whole suite with ${left}s left"
  [ "$left" -gt 30 ] && OMP_NUM_THREADS=1 timeout "$left" python3 -m pytest -q -p no:cacheprovider -n 12 tests \
    2>&1 | tee "$out/tests.log" | tail -15
fi
echo "session: $(( $(date +%s) - start )) s"
