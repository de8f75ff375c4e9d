"""The benchmark suite runs, writes every row, and its correctness column
catches a wrong implementation. (It never asserts timings.)"""
import json
import math
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))

from benchmarks import cli, implementations  # noqa: E402
from benchmarks.implementations import Implementation  # noqa: E402
from benchmarks.measure import LIMIT, run_case  # noqa: E402

TINY = ["--numel", "5000", "--small-count", "20", "--small-size", "33", "--repeats", "2", "--warmup", "1"]


def test_runs_and_writes_every_row(tmp_path, capsys):
    assert cli.main(TINY + ["--algorithms", "adam,sgd-nesterov,rmsprop", "--layouts", "large,small",
                            "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["machine"]["torch"] == torch.__version__
    names = [impl.name for impl in implementations.by_name()] + [LIMIT]
    seen = {(r["algorithm"], r["layout"].split()[0], r["implementation"]) for r in data["rows"]}
    for algorithm in ("adam", "sgd-nesterov", "rmsprop"):
        for layout in ("large", "small"):
            for name in names:
                assert (algorithm, layout, name) in seen
    for row in data["rows"]:
        if row["status"] == "ok":
            assert len(row["times_s"]) == 2 and row["median_ms"] > 0
            if row["implementation"].startswith("fusedopt"):
                assert row["error"] < 1e-5 and not row["wrong"]
        else:
            assert not row["times_s"]
    assert (tmp_path / "results.png").stat().st_size > 10_000
    assert "fusedopt" in capsys.readouterr().out


class _WrongAdam(torch.optim.Adam):
    """Adam that forgets the first bias correction: fast, plausible, wrong."""

    def step(self, closure=None):
        for group in self.param_groups:
            group["lr"] = 1e-3 * (1 - 0.9)
        return super().step(closure)


def test_correctness_column_catches_a_wrong_implementation():
    wrong = Implementation("wrong adam", lambda cls, params, opts, probe_only=False:
                           True if probe_only else _WrongAdam(params, **opts))
    rows = run_case("adam", "large", [(4096,), (7,)], implementations.by_name(["fusedopt", "torch for-loop"]),
                    repeats=1, warmup=0, extra_impls=[wrong])
    by_name = {r.implementation: r for r in rows}
    assert by_name["wrong adam"].wrong
    assert not by_name["fusedopt"].wrong and not by_name["torch for-loop"].wrong


@pytest.mark.parametrize("argv,message", [
    (["--algorithms", "adam,lion"], "unknown algorithm"),
    (["--layouts", "huge"], "unknown layout"),
    (["--implementations", "fusedopt,magic"], "unknown implementation"),
    (["--layouts", "model:resnet9000"], "unknown model"),
])
def test_bad_options_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(TINY + argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_exits_with_a_message(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(TINY + ["--device", "cuda"])
    assert exit_info.value.code == 2
    assert "CUDA" in capsys.readouterr().err


def test_model_layout_uses_a_real_module():
    from benchmarks.cases import model_shapes
    shapes = model_shapes("transformer")
    assert len(shapes) > 20 and (512, 512) in shapes


def test_training_demo_curves_overlap(tmp_path):
    from examples import train_compare
    results = train_compare.main(["--steps", "40", "--out-dir", str(tmp_path)])
    (ours, _), (theirs, _) = results.values()
    assert sum(ours[-10:]) < sum(ours[:10])
    assert max(abs(a - b) for a, b in zip(ours, theirs)) < 1e-2
    assert (tmp_path / "train_compare.png").exists()


def test_memory_report_runs():
    from benchmarks import memory
    data_mib, added_mib = memory.measure("adam", [(4096,)] * 10, steps=3)
    assert data_mib == 4096 * 10 * 4 * 4 / 2**20
    assert added_mib >= 0


def test_train_precision_comparison_runs(tmp_path):
    """The low-precision training comparison, cut to a few steps and two
    modes beside the baseline, with its own options given to python -m
    benchmarks: it trains, evaluates, and writes its files."""
    from benchmarks import cli
    cli.main(["--train-precision", "--steps", "3", "--batch", "8", "--eval-batches", "1",
              "--only", "bf16-stochastic,bf16-master", "--out-dir", str(tmp_path), "--no-chart"])
    data = json.loads((tmp_path / "train_precision.json").read_text())
    assert [r["key"] for r in data["results"]] == ["fp32", "bf16-stochastic", "bf16-master"]
    for result in data["results"]:
        assert len(result["losses"]) == 3 and all(math.isfinite(x) for x in result["losses"])


def _children():
    me, out = str(os.getpid()), []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if entry.isdigit() and f.read().rsplit(")", 1)[1].split()[1] == me:
                    out.append(int(entry))
        except OSError:
            pass
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_after_backward_case_reports_every_implementation_and_restores_the_variable(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FUSEDOPT_CPU_HELPERS", raising=False)
    assert cli.main(["--after-backward", "--algorithm", "sgd-momentum", "--dtype", "bfloat16", "--layers", "2",
                     "--width", "64", "--batch", "4", "--rounds", "3", "--warmup", "1",
                     "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "after_backward.json").read_text())
    seen = {(r["implementation"], r["phase"]): r for r in data["rows"]}
    assert set(seen) == {(name, phase) for name in ("fusedopt", "fusedopt helpers only", "torch fused")
                         for phase in ("after backward", "after a pause")}
    for row in seen.values():
        assert len(row["times_s"]) == 3 and 0 < row["median_ms"] <= row["p90_ms"]
    assert "FUSEDOPT_CPU_HELPERS" not in os.environ
    assert "after backward" in capsys.readouterr().out


def test_contended_case_reports_both_phases_and_stops_its_busy_processes(tmp_path, capsys):
    before = set(_children())
    assert cli.main(["--contended", "--layouts", "small", "--small-count", "20", "--small-size", "33",
                     "--rounds", "4", "--warmup", "1", "--busy", "2", "--out-dir", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "contended.json").read_text())
    seen = {(r["implementation"], r["phase"]): r for r in data["rows"]}
    assert set(seen) == {(name, phase) for name in ("fusedopt", "torch fused") for phase in ("quiet", "contended")}
    for (_, phase), row in seen.items():
        assert len(row["times_s"]) == 4 and 0 < row["median_ms"] <= row["p90_ms"]
        assert row["busy"] == (2 if phase == "contended" else 0)
    assert set(_children()) <= before
    assert "contended" in capsys.readouterr().out
