"""Benchmark results as data, and the pages generated from it: ``docs/results/<name>-<isa>.json`` holds a
benchmark's rows and the machine that measured them, ``.md`` the page made from that file, and
``docs/results/index.md`` lists every page. Nothing here is typed by hand."""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
# Networks written the way outside code is (the tests' foreign nets), named as a model spec: "{TEST_NETS}:NAME"
TEST_NETS = Path(__file__).resolve().parents[1] / "tests" / "nets.py"


def machine() -> dict[str, Any]:
    """The processor (model, ISA class as torch sees it, bf16/AMX flags), cores, torch version, commit and date."""
    import torch

    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in ("", platform.machine(), platform.processor()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=RESULTS.parents[1]).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": name, "isa": torch.backends.cpu.get_cpu_capability(),
        "flags": sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")),
        "cores": len(os.sched_getaffinity(0)), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "commit": commit, "date": datetime.date.today().isoformat(), **gpu(),
    }


def gpu() -> dict[str, Any]:
    """The CUDA device a GPU page was measured on (name, driver, CUDA version), or nothing without one."""
    import torch

    if not torch.cuda.is_available():
        return {}
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        driver = "unknown"
    return {"gpu": torch.cuda.get_device_name(0), "driver": driver, "cuda": torch.version.cuda}


def invocation() -> str:
    """The command line that ran this benchmark, as a page quotes it."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(RESULTS.parents[1]) if script.is_relative_to(RESULTS.parents[1]) else script
    return "python " + " ".join(shlex.quote(str(arg)) for arg in (shown, *sys.argv[1:]))


def variant_rows(results: list[Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of ``compare_variants`` results: kept bytes, peak and step time, each against the first."""
    plain = results[0]
    rows = []
    for r in results:
        d = r.to_dict(plain)
        low, high = d["time_vs_plain_range"] or (None, None)
        timing = ([f"{d['median_s'] * 1e3:.0f}", f"{d['time_vs_plain']:.2f}x ({low:.2f}-{high:.2f})"]
                  if d["median_s"] is not None and d["time_vs_plain"] is not None else ["-", "-"])
        rows.append([r.name, f"{d['forward_mib']:.1f}", f"{d['forward_vs_plain']:.1%}", f"{d['peak_mib']:.1f}",
                     f"{d['peak_vs_plain']:.1%}", *timing])
    header = ["variant", "kept MiB", "vs first", "peak MiB", "vs first", "step ms (median)", "vs first (range)"]
    return header, rows


def write(name: str, title: str, command: str, header: list[str], rows: list[list[str]], data: Any,
          directory: Path = RESULTS) -> Path:
    """Write ``<name>-<isa>.json`` (rows, data, machine, command) and the page made from it into ``directory``,
    and the index there; returns the page."""
    info = machine()
    stem = f"{name}-{info['isa'].lower()}"
    directory.mkdir(parents=True, exist_ok=True)
    record = {"title": title, "command": command, "machine": info, "header": header, "rows": rows, "data": data}
    (directory / f"{stem}.json").write_text(json.dumps(record, indent=1))
    (directory / f"{stem}.md").write_text(render(record))
    index(directory)
    return directory / f"{stem}.md"


def render(record: dict[str, Any]) -> str:
    """A results page from its JSON record."""
    m = record["machine"]
    lines = [f"# {record['title']}", "",
             f"Measured on {m['cpu']} ({m['isa']}; {', '.join(m['flags']) or 'no AVX flags read'}), {m['cores']} "
             f"cores, torch {m['torch']}, commit {m['commit']}, {m['date']}, by `{record['command']}`."
             + (f" GPU: {m['gpu']}, driver {m['driver']}, CUDA {m['cuda']}." if m.get("gpu") else ""), "",
             "| " + " | ".join(record["header"]) + " |", "|" + "---|" * len(record["header"])]
    lines += ["| " + " | ".join(row) + " |" for row in record["rows"]]
    return "\n".join(lines) + "\n"


def index(directory: Path = RESULTS) -> None:
    """``index.md`` of ``directory``: every results page, with its machine."""
    lines = ["# Results", "", "Each page is generated from the JSON beside it, written by the benchmark named on it.",
             ""]
    for path in sorted(directory.glob("*.json")):
        record = json.loads(path.read_text())
        m = record["machine"]
        lines.append(f"- [{record['title']}]({path.stem}.md): {m['cpu']}, {m['isa']}, torch {m['torch']}, "
                     f"{m['date']}")
    (directory / "index.md").write_text("\n".join(lines) + "\n")
