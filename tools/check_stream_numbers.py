"""Fails if a built library or object file formats numbers through std::ostream.

On the GPU image, a number streamed into an ostream by code compiled into
fusedopt's extension kills the process (DESIGN.md, "Facts about the build"),
so the extension builds every message with fusedopt::message (csrc/message.h).
Such a use shows in the binary as an undefined reference to one of
libstdc++'s number inserters (std::ostream::_M_insert<long>, operator<<(int),
num_put, ...), which this finds with nm and attributes to the functions that
call it with objdump.

    python tools/check_stream_numbers.py fusedopt/_C*.so build/cuda-check/*.o

Exit status 1, with the symbols and their callers, if any is found.
"""
import re
import subprocess
import sys

# Demangled names of libstdc++'s numeric ostream insertion, narrow and wide.
NUMERIC_INSERTION = re.compile(
    r"(?:w?ostream|basic_ostream<[^>]*>)::_M_insert<"
    r"|(?:w?ostream|basic_ostream<[^>]*>)::operator<<\((?:int|unsigned|short|long|float|double|bool|void const\*)"
    r"|std::num_put<"
)


def undefined_symbols(path):
    """Demangled names of the symbols `path` imports (dynamic ones for a shared library)."""
    dynamic = ["-D"] if ".so" in path.rsplit("/", 1)[-1] else []
    out = subprocess.run(["nm", "-C", "--undefined-only", *dynamic, path], check=True, capture_output=True,
                         text=True).stdout
    return [line.split(None, 1)[1].split("@")[0].strip() for line in out.splitlines() if line.strip()]


def callers(path, symbols):
    """{symbol: sorted names of the functions in `path` that call or reference it}."""
    out = subprocess.run(["objdump", "-dr", "-C", "--no-show-raw-insn", path], check=True, capture_output=True,
                         text=True).stdout
    found = {s: set() for s in symbols}
    function = "?"
    for line in out.splitlines():
        header = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if header:
            function = header.group(1)
            continue
        if function.endswith("@plt"):
            continue
        for s in symbols:
            if s in line:
                found[s].add(function)
    return {s: sorted(f) for s, f in found.items()}


def find(path):
    """[(symbol, [calling functions])] for every ostream number inserter `path` uses."""
    symbols = sorted({s for s in undefined_symbols(path) if NUMERIC_INSERTION.search(s)})
    if not symbols:
        return []
    by_symbol = callers(path, symbols)
    return [(s, by_symbol[s]) for s in symbols]


def main(paths):
    bad = 0
    for path in paths:
        for symbol, functions in find(path):
            bad += 1
            print(f"{path}: formats numbers through std::ostream: {symbol}")
            for f in functions or ["(caller not found)"]:
                print(f"    called from {f}")
    if bad:
        print("Build such messages with fusedopt::message / FUSEDOPT_CHECK (csrc/message.h), not TORCH_CHECK "
              "with numbers or an ostringstream.")
        return 1
    print(f"no ostream number formatting in {len(paths)} file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
