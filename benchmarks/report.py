"""The benchmark's outputs: a table on the terminal, a JSON file with every
raw timing and the machine, and a bar chart."""
import json
import os
import platform

import torch

import fusedopt

from .measure import LIMIT, limit_row, torch_best


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = fusedopt.info()
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_isa": info["cpu_isa"],
        "fusedopt_native": info["native"],
        "fusedopt_cuda": info["cuda"],
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def machine_line():
    return "machine: " + ", ".join(f"{k}={v}" for k, v in machine().items())


def percentile(times, q):
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def write_rows(out_dir, name, settings, rows):
    """<out_dir>/<name> as JSON: the machine, the settings and rows of plain
    values (the cases with their own rows: --contended, --after-backward).
    Returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        json.dump({"machine": machine(), "settings": settings, "rows": rows}, f, indent=1)
    return path


def _fmt(value, spec, missing=""):
    return missing if value is None else format(value, spec)


def table(cases):
    """Text table: one block per case, rows sorted fastest first."""
    lines = [f"{'algorithm':<17}{'layout':<34}{'implementation':<22}{'median ms':>10}{'GB/s':>8}"
             f"{'% limit':>9}{'vs torch':>10}{'rel error':>11}  check"]
    for rows in cases:
        limit, best = limit_row(rows), torch_best(rows)
        ran = sorted((r for r in rows if r.times_s and r.implementation != LIMIT), key=lambda r: r.median_ms)
        for r in [limit] + ran + [r for r in rows if not r.times_s]:
            if not r.times_s:
                lines.append(f"{r.algorithm:<17}{r.layout:<34}{r.implementation:<22}{r.status:>10}")
                continue
            pct = 100 * limit.median_ms / r.median_ms
            speedup = best.median_ms / r.median_ms if best is not None and r.implementation != LIMIT else None
            speedup = "" if speedup is None else f"{speedup:.2f}x"
            check = "" if r.error is None else ("WRONG" if r.wrong else "ok")
            lines.append(f"{r.algorithm:<17}{r.layout:<34}{r.implementation:<22}{r.median_ms:>10.2f}"
                         f"{r.gb_per_s:>8.1f}{pct:>8.0f}%{speedup:>10}"
                         f"{_fmt(r.error, '.1e'):>11}  {check}")
        lines.append("")
    return "\n".join(lines)


def write_json(path, cases, settings):
    data = {
        "machine": machine(),
        "settings": settings,
        "rows": [dict(algorithm=r.algorithm, layout=r.layout, implementation=r.implementation, status=r.status,
                      times_s=r.times_s, median_ms=r.median_ms, gb_per_s=r.gb_per_s, bytes_moved=r.bytes_moved,
                      error=r.error, wrong=r.wrong)
                 for rows in cases for r in rows],
    }
    with open(path, "w") as f:
        json.dump(data, f, indent=1)


def write_chart(path, cases):
    """One panel per layout: median step time of each implementation per
    algorithm (log scale), the traffic limit drawn as a black tick."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layouts = list(dict.fromkeys(rows[0].layout for rows in cases))
    impls = list(dict.fromkeys(r.implementation for rows in cases for r in rows
                               if r.times_s and r.implementation != LIMIT))
    fig, axes = plt.subplots(len(layouts), 1, figsize=(12, 3.8 * len(layouts)), squeeze=False)
    width = 0.8 / max(len(impls), 1)
    for ax, layout in zip(axes[:, 0], layouts):
        blocks = [rows for rows in cases if rows[0].layout == layout]
        for j, name in enumerate(impls):
            xs, ys, wrong = [], [], []
            for i, rows in enumerate(blocks):
                row = next((r for r in rows if r.implementation == name and r.times_s), None)
                if row is not None:
                    xs.append(i + (j - (len(impls) - 1) / 2) * width)
                    ys.append(row.median_ms)
                    wrong.append(row.wrong)
            ax.bar(xs, ys, width, label=name)
            # A wrong result is marked however fast it was.
            ax.plot([x for x, w in zip(xs, wrong) if w], [y * 1.15 for y, w in zip(ys, wrong) if w], "rx")
        for i, rows in enumerate(blocks):
            ax.hlines(limit_row(rows).median_ms, i - 0.45, i + 0.45, colors="black", linewidth=2)
        ax.set_xticks(range(len(blocks)), [rows[0].algorithm for rows in blocks])
        ax.set_yscale("log")
        ax.set_ylabel("median step time (ms)")
        ax.set_title(f"{layout}; black line: {LIMIT} (same bytes, trivial arithmetic); red x: wrong result")
    axes[0, 0].legend(ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
