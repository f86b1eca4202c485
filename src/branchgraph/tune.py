"""Precision, memory layout and pass set chosen by measurement: each candidate is timed interleaved in one
process on the real model and batch, the fastest whose outputs stay within tolerance wins, and the choice is
cached per (processor, torch, model, input shape, mode) in the user's cache directory."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from branchgraph.errors import ConfigError
from branchgraph.hardware import cpu_capability, cpu_model, native_bf16
from branchgraph.heap import keeping
from branchgraph.passes.base import check_mode
from branchgraph.passes.manager import resolve
from branchgraph.passes.pipeline import REDUCED_PRECISION_TOLERANCE, optimize
from branchgraph.timing import make_runner, time_interleaved

CACHE_FORMAT = 1
CACHE_NAME = "tune.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cache_dir() -> Path:
    """``$BRANCHGRAPH_CACHE_DIR``, else ``$XDG_CACHE_HOME/branchgraph``, else ``~/.cache/branchgraph``."""
    explicit = os.environ.get("BRANCHGRAPH_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "branchgraph"


@dataclass(frozen=True)
class Candidate:
    """One way to run the model: arithmetic precision, memory layout, and the passes (None: eager)."""

    precision: str = "fp32"
    channels_last: bool = False
    passes: tuple[str, ...] | None = None

    @property
    def name(self) -> str:
        text = f"{self.precision} {'channels_last' if self.channels_last else 'NCHW'}"
        return text if self.passes is None else f"{text} + passes {','.join(self.passes) or 'none'}"

    @property
    def autocast(self) -> torch.dtype | None:
        """The dtype to run the forward under ``torch.autocast``: eager reduced precision only (with passes,
        the ``precision`` pass puts autocast into the graph)."""
        return DTYPES[self.precision] if self.precision != "fp32" and self.passes is None else None

    def pass_list(self) -> list[str]:
        """The passes that give this candidate on a captured graph (layout and precision as passes, last but
        ``parallel``, which must stay last)."""
        base = [p for p in (self.passes or ()) if p not in ("layout", "precision", "parallel")]
        extra = (["layout"] if self.channels_last else []) + (["precision"] if self.precision != "fp32" else [])
        return base + extra + (["parallel"] if "parallel" in (self.passes or ()) else [])


@dataclass
class TuneResult:
    """What was measured (or read from the cache) and what was chosen, with the reason in words."""

    key: dict[str, Any]
    chosen: Candidate
    median_s: dict[str, float] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    cached: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        """Why ``chosen`` won, in one sentence."""
        if not self.median_s:
            return f"{self.chosen.name}: the only candidate"
        best = self.median_s[self.chosen.name]
        worst_name = max(self.median_s, key=self.median_s.__getitem__)
        ratio = f" ({self.median_s[worst_name] / best:.2f}x {worst_name})" if worst_name != self.chosen.name else ""
        source = "cached measurement" if self.cached else "measured"
        return (f"{self.chosen.name}: fastest whose outputs hold of {len(self.median_s)} {source} candidates, "
                f"{1000 * best:.1f} ms per {self.key['mode']} step{ratio}")

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": asdict(self.chosen) | {"name": self.chosen.name}, "reason": self.reason,
                "median_ms": {k: 1000 * v for k, v in self.median_s.items()}, "rejected": self.rejected,
                "left_out": self.left_out, "cached": self.cached, "notes": self.notes, "key": self.key}

    def to_text(self) -> str:
        lines = [f"tuned: {self.reason}"]
        lines += [f"  {name:<44} {1000 * t:9.1f} ms" + ("  <- chosen" if name == self.chosen.name else "")
                  for name, t in sorted(self.median_s.items(), key=lambda kv: kv[1])]
        lines += [f"  {name:<44} rejected: {why}" for name, why in self.rejected.items()]
        lines += [f"  {name:<44} left out: {why}" for name, why in self.left_out.items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def candidates(
    device: torch.device, mode: str, layouts: Sequence[bool] = (False, True),
    pass_sets: Sequence[Sequence[str] | None] = (None,), precisions: Sequence[str] | None = None,
) -> tuple[list[Candidate], dict[str, str]]:
    """Every precision x layout x pass set worth timing on ``device``, and those left out with the reason:
    bf16 only where it is native (emulated bf16 is several times slower), fp16 only on CUDA; precisions named in
    ``precisions`` are timed as given (the user forced them). ``layout`` and ``precision`` in a pass set are
    dropped: they are the layout and precision axes."""
    wanted = list(precisions or DTYPES)
    unknown = [p for p in wanted if p not in DTYPES]
    if unknown:
        raise ConfigError(f"unknown precision {', '.join(unknown)}; choose from {', '.join(DTYPES)}")
    kept, left_out = [], {}
    for p in wanted:
        if precisions is not None:
            kept.append(p)
        elif p == "bf16" and not native_bf16(device):
            where = "GPU" if device.type == "cuda" else f"CPU ({cpu_capability()}, no avx512_bf16/amx_bf16 flag)"
            left_out[p] = f"no native bf16 on this {where}: emulated, several times slower"
        elif p == "fp16" and device.type != "cuda":
            left_out[p] = "fp16 autocast is for CUDA; CPUs run it emulated"
        else:
            kept.append(p)
    sets = [None if ps is None else tuple(p for p in ps if p not in ("layout", "precision")) for ps in pass_sets]
    for passes in sets:
        if passes is not None:
            resolve(list(passes), mode)
    found = [Candidate(p, cl, passes) for passes in dict.fromkeys(sets) for cl in dict.fromkeys(layouts) for p in kept]
    return found, left_out


def _model_id(model: nn.Module) -> str:
    """The model's class and a hash of its printed structure and parameter shapes (same net, same id)."""
    shapes = ";".join(f"{n}:{tuple(p.shape)}" for n, p in model.named_parameters())
    digest = hashlib.sha256((repr(model) + shapes).encode()).hexdigest()[:16]
    return f"{type(model).__module__}.{type(model).__qualname__}:{digest}"


def build_candidate(
    model: nn.Module, example: torch.Tensor, mode: str, cand: Candidate
) -> tuple[nn.Module, torch.Tensor]:
    """The network for ``cand`` and the input in its layout (eager: a copy, run it under autocast for reduced
    precision; with passes: ``optimize``, unverified, since the caller verifies what it keeps)."""
    x = example.contiguous(memory_format=torch.channels_last) if cand.channels_last and example.dim() == 4 \
        else example
    if cand.passes is None:
        net = copy.deepcopy(model).train(mode == "train")
        return (net.to(memory_format=torch.channels_last) if cand.channels_last else net), x
    net, _ = optimize(model, example[:2], passes=cand.pass_list(), mode=mode, verify=False)
    return net, x


def _output(net: nn.Module, x: torch.Tensor, cand: Candidate) -> torch.Tensor:
    """The main output of one forward, in float32, under the candidate's autocast when eager."""
    context = torch.autocast(x.device.type, dtype=cand.autocast) if cand.autocast else contextlib.nullcontext()
    with torch.no_grad(), context:
        out = net(x)
    return (out[0] if isinstance(out, tuple) else out).float()


def _load_cache(path: Path) -> tuple[dict[str, Any], str | None]:
    """The cache's entries, and a note when the file was unreadable or malformed (it is set aside, never
    trusted, and rebuilt)."""
    if not path.exists():
        return {}, None
    try:
        data = json.loads(path.read_text())
        if not (isinstance(data, dict) and data.get("format") == CACHE_FORMAT
                and isinstance(data.get("entries"), dict)):
            raise ValueError(f"not a branchgraph tuning cache of format {CACHE_FORMAT}")
        return data["entries"], None
    except (OSError, ValueError) as exc:
        aside = path.with_name(path.name + ".corrupt")
        try:
            path.replace(aside)
        except OSError:
            aside = path
        return {}, f"tuning cache {path} was unreadable ({str(exc).splitlines()[0][:80]}); kept as {aside}, rebuilt"


def _cached_choice(entry: Any, found: list[Candidate]) -> tuple[Candidate, dict[str, float]] | None:
    """The cached entry's choice if it is well-formed and still one of this run's candidates."""
    try:
        chosen = Candidate(entry["chosen"]["precision"], bool(entry["chosen"]["channels_last"]),
                           None if entry["chosen"]["passes"] is None else tuple(entry["chosen"]["passes"]))
        medians = {str(k): float(v) / 1000 for k, v in entry["median_ms"].items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return (chosen, medians) if chosen in found else None


def _write_cache(path: Path, entries: dict[str, Any]) -> str | None:
    """Write atomically (temporary file, then rename); a note instead of an error when it cannot."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": CACHE_FORMAT, "entries": entries}, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
    except OSError as exc:
        return f"could not write the tuning cache {path} ({exc.strerror}); the choice is not remembered"
    return None


def tune(
    model: nn.Module, example: torch.Tensor, target: torch.Tensor | None = None, mode: str = "train", *,
    layouts: Sequence[bool] = (False, True), pass_sets: Sequence[Sequence[str] | None] = (None,),
    precisions: Sequence[str] | None = None, rounds: int = 3, warmup: int = 1, cache: bool = True,
    tolerance: float = REDUCED_PRECISION_TOLERANCE,
) -> TuneResult:
    """Time every candidate (see ``candidates``) on ``example`` (and ``target`` for training steps) interleaved,
    reject a reduced-precision one whose main output is more than ``tolerance`` off fp32's normwise, and
    choose the fastest left. ``model`` is not modified. With ``cache``, the choice is read from and written to
    ``cache_dir()/tune.json`` under the processor, torch version, model, input shape, mode and candidates."""
    check_mode(mode)
    if rounds <= 0 or warmup < 0:
        raise ConfigError(f"rounds must be > 0 and warmup >= 0; got rounds={rounds}, warmup={warmup}")
    device = example.device
    found, left_out = candidates(device, mode, layouts, pass_sets, precisions)
    key = {"cpu": cpu_model(), "capability": cpu_capability(), "torch": torch.__version__,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "threads": torch.get_num_threads(), "model": _model_id(model), "input": list(example.shape),
           "mode": mode, "candidates": [c.name for c in found], "heap": "keep" if keeping() else "system"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    path = cache_dir() / CACHE_NAME
    entries, note = _load_cache(path) if cache else ({}, None)
    notes = [note] if note else []
    hit = _cached_choice(entries.get(digest), found) if cache else None
    if hit is not None:
        return TuneResult(key, hit[0], hit[1], left_out=left_out, cached=True, notes=notes)
    if len(found) == 1:
        return TuneResult(key, found[0], left_out=left_out, notes=notes)
    y = target if target is not None else torch.zeros(example.shape[0], dtype=torch.long, device=device)
    reference = _output(copy.deepcopy(model).eval(), example, Candidate())
    runs, rejected = {}, {}
    for cand in found:
        net, x = build_candidate(model, example, mode, cand)
        if cand.precision != "fp32":
            probe = copy.deepcopy(net).eval()
            err = ((_output(probe, x, cand) - reference).norm() / reference.norm().clamp_min(1e-30)).item()
            if not err <= tolerance:
                rejected[cand.name] = f"output {err:.2e} off fp32 normwise (> {tolerance:g})"
                continue
        runs[cand.name] = make_runner(net, x, y, mode, autocast=cand.autocast)
    if not runs:
        raise ConfigError(f"every precision asked for is too far from fp32 on this model: "
                          f"{'; '.join(f'{k}: {v}' for k, v in rejected.items())}; use fp32 or auto")
    medians = time_interleaved(runs, rounds, warmup)
    by_name = {c.name: c for c in found}
    chosen = by_name[min(medians, key=medians.__getitem__)]
    result = TuneResult(key, chosen, medians, rejected, left_out, notes=notes)
    if cache:
        entries[digest] = {"key": key, "chosen": asdict(chosen), "median_ms": {k: 1000 * v for k, v in medians.items()},
                           "rejected": rejected, "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_note = _write_cache(path, entries)
        if write_note:
            result.notes.append(write_note)
    return result
