"""What the built extension links and imports: no number may reach a
std::ostream in its code (that crashes the process on the GPU image, see
csrc/message.h), and it carries no libstdc++ of its own."""
import os
import shutil
import subprocess
import sys

import pytest

import fusedopt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import check_stream_numbers  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not fusedopt.info()["native"], reason="native extension not loaded"),
    pytest.mark.skipif(shutil.which("nm") is None or shutil.which("objdump") is None
                       or not sys.platform.startswith("linux"), reason="needs nm and objdump (binutils), Linux"),
]


def test_the_extension_formats_no_number_through_an_ostream():
    assert check_stream_numbers.find(fusedopt._native.C.__file__) == []


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_the_stream_check_finds_and_names_a_number_streamed(tmp_path):
    """The check can fail: a library whose message streams a long (as
    TORCH_CHECK(cond, "index ", i) does) is caught, and its function named."""
    source = tmp_path / "toy.cpp"
    source.write_text('#include <sstream>\n#include <string>\n'
                      'std::string bad_index(long i) { std::ostringstream s; s << "index " << i; return s.str(); }\n'
                      'std::string good_index(long i) { return "index " + std::to_string(i); }\n')
    library = tmp_path / "libtoy.so"
    subprocess.run(["g++", "-O2", "-shared", "-fPIC", str(source), "-o", str(library)], check=True)
    found = check_stream_numbers.find(str(library))
    assert [symbol for symbol, _ in found] == ["std::ostream& std::ostream::_M_insert<long>(long)"]
    assert any(f.startswith("bad_index") for f in found[0][1])
    assert not any(f.startswith("good_index") for _, callers in found for f in callers)
    assert check_stream_numbers.main([str(library)]) == 1


def _defined_libstdcxx_symbols(library):
    out = subprocess.run(["nm", "-D", "--defined-only", library], capture_output=True, text=True, check=True)
    return [line.split()[-1] for line in out.stdout.splitlines() if " _ZNSt6locale" in line]


def test_the_extension_uses_the_process_libstdcxx():
    """The extension carries no static libstdc++ of its own (a second copy of
    its locale data is another way to break number formatting,
    pytorch/pytorch#109923), and one libstdc++ is mapped."""
    assert _defined_libstdcxx_symbols(fusedopt._native.C.__file__) == []
    mapped = {line.split()[-1] for line in open("/proc/self/maps") if "libstdc++" in line}
    assert len(mapped) <= 1, mapped
