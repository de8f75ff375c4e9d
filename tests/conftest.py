import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import fusedopt  # noqa: E402


@pytest.fixture(params=fusedopt.info()["cpu_isas_supported"] or ["none"])
def cpu_isa(request):
    """Runs a test once per CPU instruction set this machine supports."""
    if request.param == "none":
        pytest.skip("native extension not loaded")
    fusedopt.set_cpu_isa(request.param)
    yield request.param
    fusedopt.set_cpu_isa("auto")
