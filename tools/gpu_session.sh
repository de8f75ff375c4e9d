#!/usr/bin/env bash
# One device-machine session: build with CUDA, run the tests, run the GPU
# benchmark. Usage: tools/gpu_session.sh [tests|bench|all|quick|diagnose] (default all).
# Logs go to $OUT (or ./gpu-out); the last lines printed are the summary.
set -uo pipefail
what=${1:-all}
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FUSEDOPT_CUDA=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
start=$(date +%s)
if [ "$what" = bench ] && ls fusedopt/_C*.so >/dev/null 2>&1; then
  echo "reusing the build of the last call"
else
python3 -m pip install -q --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1 \
  || { tail -50 "$out/build.log"; echo "BUILD FAILED"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
fi
python3 -c "import fusedopt, json; print(json.dumps(fusedopt.info()))"
if [ "$what" = diagnose ] || [ "$what" = tests ] || [ "$what" = all ]; then
  # The H100 image crashed (SIGSEGV in codecvt<char16_t>::do_in under
  # ostream::_M_insert<unsigned long>) on error messages that stream an
  # integer, inside pytest. That is the backtrace of pytorch#109923: a
  # library with its own static libstdc++ loaded before torch. Outside
  # pytest, and inside it without plugin autoload, tells which.
  python3 - <<'PY' 2>&1 | tee "$out/diagnose.log"
import torch, fusedopt
try:
    torch.zeros(2) + torch.zeros(3)  # torch's own message with numbers in it
except RuntimeError as e:
    print("bare python, torch: raised:", str(e).splitlines()[0])
try:
    torch.ops.fusedopt.traffic_([torch.zeros(2)], [], [], [], [])
except RuntimeError as e:
    print("bare python, fusedopt: raised:", str(e).splitlines()[0])
print("libstdc++ mapped:", sorted({l.split()[-1] for l in open("/proc/self/maps") if "libstdc++" in l}))
PY
  { g++ --version | head -1; ldd fusedopt/_C*.so | grep -E 'stdc|gcc_s'
    PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python3 -m pytest -q -p no:cacheprovider tests/test_ops.py -k libstdcxx \
      | tail -3; } 2>&1 | tee -a "$out/diagnose.log"
  python3 -m pytest --co -p no:cacheprovider tests/test_bad_input.py 2>&1 | grep -i "^plugins" | tee -a "$out/diagnose.log"
  PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_bad_input.py 2>&1 \
    | tail -3 | sed 's/^/no plugin autoload: /' | tee -a "$out/diagnose.log"
fi
if [ "$what" = quick ]; then
  timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_bad_input.py tests/test_cuda.py tests/test_amp.py \
    tests/test_ops.py 2>&1 | tee "$out/test_cuda.log" | tail -15
fi
if [ "$what" = tests ] || [ "$what" = all ]; then
  # CUDA tests first (they are what only this machine can run), then the rest
  # with one thread per worker (16 threads in each of 8 workers thrash).
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_amp.py 2>&1 \
    | tee "$out/test_cuda.log" | tail -25
  ldd fusedopt/_C*.so | grep -i omp; ls "$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__))')/lib" | grep -i omp
  timeout 90 cuda-gdb -q -batch -ex run -ex bt --args python3 -m pytest -q -x -p no:cacheprovider \
    tests/test_bad_input.py >"$out/gdb.log" 2>&1; grep -E "passed|failed|SIGSEGV|^#" "$out/gdb.log" | head -30
  OMP_NUM_THREADS=1 timeout 150 python3 -m pytest -q -p no:cacheprovider -n 12 tests 2>&1 \
    | tee "$out/tests.log" | tail -25
fi
if [ "$what" = quick ]; then
  timeout 200 python3 -m benchmarks --device cuda --layouts large,small,transformer --numel $((256 * 2**20)) \
    --implementations "fusedopt,torch foreach,torch fused" --repeats 15 --warmup 3 \
    --out-dir "$out" 2>"$out/bench.err" | tee "$out/bench.txt"
  tail -3 "$out/bench.err"
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  timeout 150 python3 -m benchmarks --device cuda --layouts large --numel $((1024 * 2**20)) --algorithms adam \
    --implementations "fusedopt,torch fused" --repeats 20 --warmup 3 --no-chart --out-dir "$out/1b" \
    2>"$out/bench1b.err" | tee "$out/bench1b.txt"
  timeout 240 python3 -m benchmarks --device cuda --layouts large,small,transformer --numel $((256 * 2**20)) \
    --implementations "fusedopt,torch for-loop,torch foreach,torch fused" --repeats 20 --warmup 3 \
    --out-dir "$out" 2>"$out/bench.err" | tee "$out/bench.txt"
  tail -3 "$out/bench.err"
fi
