#!/usr/bin/env bash
# `make sanitize`: builds the extension with AddressSanitizer and
# UndefinedBehaviorSanitizer and runs the native-op tests under them. Exits
# non-zero if the build or a test fails, or if a sanitizer reports anything.
#
# The working tree's sources (tracked and untracked, not ignored: csrc,
# fusedopt, tests, examples, setup.py, pyproject.toml) are copied to
# $SANITIZE_DIR/tree (default build-sanitize/tree) and built there in place,
# so the sanitized fusedopt/_C*.so is the one imported by the tests run from
# that copy; the repository's own build and .so are never touched. Rebuilds
# are incremental (ninja; only changed files are rewritten in the copy).
#
# The flags: setup.py's CXX_FLAGS, then -O1 -g -fsanitize=address,undefined
# -fno-sanitize-recover=all -fno-omit-frame-pointer -fno-wrapv (appended, so
# -O1 wins over -O3; CFLAGS would come before them). -fno-wrapv undoes the
# -fwrapv of Python's own compiler flags, under which UBSan does not check
# signed integer overflow. setup.py itself is unchanged: its setup() call is
# wrapped to append the flags to the extension.
#
# Python is not instrumented, so libasan is preloaded, together with
# libstdc++: with libasan alone the first C++ exception aborts in
# real___cxa_throw. Leak detection is off (CPython and torch keep memory
# until exit). ASan and UBSan halt on the first report
# (-fno-sanitize-recover=all, halt_on_error=1); reports are printed again at
# the end.
#
# Environment: PY (python of the venv, default .venv/bin/python), MAX_JOBS
# (default 2), SANITIZE_DIR, SANITIZE_TIMEOUT (seconds for pytest, default
# 600; they took 1 to 5 minutes here on 2 cores), SANITIZE_SYNC=0 (rebuild and test
# the copy as it is, without copying the working tree over it: to try a
# change made in the copy only).
# Extra arguments are passed to pytest (e.g. -x, -k adam).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")  # absolute, symlink kept (the venv's python)
DIR=${SANITIZE_DIR:-$ROOT/build-sanitize}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
TREE=$DIR/tree
LOGS=$DIR/logs
TIMEOUT=${SANITIZE_TIMEOUT:-600}
export MAX_JOBS=${MAX_JOBS:-2}

SAN_CFLAGS="-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -fno-wrapv"
SAN_LDFLAGS="-fsanitize=address,undefined"

TESTS=(tests/test_ops.py tests/test_bad_input.py tests/test_parity_reference.py tests/test_plans.py
       tests/test_amp.py tests/test_classic.py tests/test_state_dict.py tests/test_precision.py
       tests/test_quantized.py tests/test_host_threads.py)
# No test of this list is left out: the two that start a Python subprocess
# (test_ops.py's _run_python) pass os.environ on, so the child has the preload
# and sanitizer options too; none compiles or loads another native library.
# examples/ is copied for test_classic.py, which trains examples/classic_network.py.
DESELECT=()

start=$(date +%s)

# 1. The copy: the working tree's tracked and untracked (not ignored) files
#    of these paths. A file whose content differs is written anew (so it is
#    newer than its object, even if the working tree's copy is older: ninja
#    goes by mtime), an unchanged one is left alone, and a file gone from the
#    working tree goes from the copy; the ninja objects (tree/build) and the
#    built .so stay, so only what changed recompiles.
COPIED=(csrc fusedopt tests examples setup.py pyproject.toml)
if [ "${SANITIZE_SYNC:-1}" != 0 ]; then
  mkdir -p "$TREE"
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- "${COPIED[@]}") >"$DIR/copied.lst"
  "$PY" - "$ROOT" "$TREE" "$DIR/copied.lst" "${COPIED[@]}" <<'EOF'
import os, shutil, sys

root, tree, listing, copied = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
with open(listing, "rb") as fh:
    wanted = {f for f in fh.read().decode().split("\0") if f and os.path.isfile(os.path.join(root, f))}
changed = 0
for f in sorted(wanted):
    src, dst = os.path.join(root, f), os.path.join(tree, f)
    with open(src, "rb") as a:
        data = a.read()
    if os.path.isfile(dst):
        with open(dst, "rb") as b:
            if b.read() == data:
                continue
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "wb") as b:
        b.write(data)
    shutil.copymode(src, dst)
    changed += 1
removed = 0
for top in copied:
    for dirpath, dirnames, filenames in os.walk(os.path.join(tree, top)):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            f = os.path.relpath(os.path.join(dirpath, name), tree)
            if f not in wanted and not name.endswith(".so"):  # the .so: the sanitized build
                os.remove(os.path.join(tree, f))
                removed += 1
print(f"sanitize: copy of the working tree in {tree}: {changed} files written, {removed} removed")
EOF
fi

# 2. The sanitized build, in place in the copy (FUSEDOPT_CUDA=0: CPU kernels only).
echo "sanitize: building with $SAN_CFLAGS (MAX_JOBS=$MAX_JOBS), log in $DIR/build.log"
if ! (cd "$TREE" && FUSEDOPT_CUDA=0 SAN_CFLAGS="$SAN_CFLAGS" SAN_LDFLAGS="$SAN_LDFLAGS" "$PY" - build_ext --inplace \
        >"$DIR/build.log" 2>&1 <<'EOF'
import os, runpy, sys
import setuptools

cflags, ldflags = os.environ["SAN_CFLAGS"].split(), os.environ["SAN_LDFLAGS"].split()
setup = setuptools.setup


def sanitized_setup(**kwargs):
    for ext in kwargs["ext_modules"]:
        args = ext.extra_compile_args
        (args["cxx"] if isinstance(args, dict) else args).extend(cflags)
        ext.extra_link_args.extend(ldflags)
    return setup(**kwargs)


setuptools.setup = sanitized_setup  # setup.py does `from setuptools import setup` after this
sys.argv[0] = "setup.py"
runpy.run_path("setup.py", run_name="__main__")
EOF
); then
  tail -40 "$DIR/build.log"
  echo "sanitize: BUILD FAILED (see $DIR/build.log)"
  exit 1
fi
echo "sanitize: built in $(( $(date +%s) - start )) s"

# 3. The runtime environment.
LIBASAN=$(g++ -print-file-name=libasan.so)
LIBSTDCXX=$(g++ -print-file-name=libstdc++.so)
for lib in "$LIBASAN" "$LIBSTDCXX"; do
  [ -f "$lib" ] || { echo "sanitize: $lib not found (g++ -print-file-name)"; exit 1; }
done
rm -rf "$LOGS"
mkdir -p "$LOGS"
export LD_PRELOAD="$LIBASAN $LIBSTDCXX${LD_PRELOAD:+ $LD_PRELOAD}"
# ASan reports go to files in $LOGS (a child process's too, even when its test
# expects it to fail). UBSan's runtime (libubsan, beside libasan) ignores
# log_path and writes to stderr: pytest runs with --capture=sys, so native
# writes to fd 2 reach the output, which is kept in $DIR/pytest.log and
# searched for reports.
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:print_summary=1:log_path=$LOGS/asan"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:print_summary=1"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
unset FUSEDOPT_BACKEND FUSEDOPT_CPU_ISA

MARKERS='ERROR: AddressSanitizer|runtime error: |SUMMARY: [A-Za-z]*Sanitizer'
report() {  # prints every ASan report file, finds UBSan's in the pytest output; returns 1 if there is any
  local found=0 f
  if [ -f "$DIR/pytest.log" ] && grep -Eq "$MARKERS" "$DIR/pytest.log"; then
    found=1
    echo "===== sanitizer output in $DIR/pytest.log:"
    grep -En "$MARKERS" "$DIR/pytest.log" | head -20
  fi
  for f in "$LOGS"/asan*; do
    [ -s "$f" ] || continue
    found=1
    echo "===== sanitizer report: $f"
    cat "$f"
  done
  return $found
}

# The extension imported must be the sanitized one of the copy.
cd "$TREE"
if ! "$PY" - <<'EOF'
import os, fusedopt, fusedopt._C as C
so = os.path.realpath(C.__file__)
assert so.startswith(os.path.realpath(os.getcwd()) + os.sep), f"imported {so}, not the copy's build"
assert fusedopt.info()["native"], fusedopt.info()
with open(so, "rb") as f:
    assert b"__asan_init" in f.read(), f"{so} is not ASan-instrumented"
print("sanitize: testing", so, "isa", fusedopt.info()["cpu_isa"], "of", fusedopt.info()["cpu_isas_supported"])
EOF
then
  report || true
  echo "sanitize: FAILED: the sanitized extension does not load"
  exit 1
fi

# 4. The tests, time-bounded.
rm -f "$DIR/pytest.log"
rc=0
timeout --kill-after=30 "$TIMEOUT" "$PY" -m pytest -q -rfEs -p no:cacheprovider --capture=sys "${TESTS[@]}" \
  ${DESELECT[@]+"${DESELECT[@]}"} "$@" 2>&1 | tee "$DIR/pytest.log" || rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "sanitize: pytest ran past $TIMEOUT s"
sanitizer=0
report || sanitizer=1
echo "sanitize: $(( $(date +%s) - start )) s in all"
if [ "$rc" != 0 ] || [ "$sanitizer" != 0 ]; then
  echo "sanitize: FAILED (pytest exit $rc$([ "$sanitizer" = 1 ] && echo ', sanitizer reports above'))"
  exit 1
fi
echo "sanitize: clean"
