"""Structured channel pruning of a trained run, then fine-tuning, with the accuracy measured at each stage."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from branchgraph.data import BatchLoader
from branchgraph.errors import ConfigError
from branchgraph.graph import capture
from branchgraph.hardware import resolve_device
from branchgraph.passes.base import reports
from branchgraph.passes.channel_pruning import prune_channels
from branchgraph.training.distributed import DistInfo
from branchgraph.training.evaluation import evaluate, load_trained
from branchgraph.training.report import held_out_accuracy
from branchgraph.training.run_state import resolve_checkpoint
from branchgraph.training.setup import build_preprocess
from branchgraph.training.trainer import Trainer


def prune_and_finetune(
    run_dir: str | Path, amount: float = 0.5, epochs: int = 1, lr: float | None = None, progress: bool = True,
    model: str | None = None, trust_checkpoint: bool = False, data: Any = None,
) -> dict[str, Any]:
    """Prune ``amount`` of the prunable channels of a trained run's model, fine-tune it for ``epochs`` (in a new
    run directory beside the run, same recipe, peak lr ``lr`` or a quarter of the run's) and report test accuracy,
    parameters and MACs before pruning, after pruning and after fine-tuning. A run of a model spec (code) is only
    rebuilt when ``model`` names that spec again or ``trust_checkpoint`` is set (``data``: as for
    ``evaluate_checkpoint``). Accuracy is the test split's (the validation split's where the data has no test)."""
    from branchgraph.graph import summary

    if epochs <= 0:
        raise ConfigError(f"epochs must be a positive integer; got {epochs}", "epochs")
    _, config, found, net = load_trained(run_dir, model, trust_checkpoint, data)  # the weights the run evaluated
    # the fine-tuned run goes beside this one, never to the folder the checkpoint recorded
    config = dataclasses.replace(config, out_dir=str(resolve_checkpoint(run_dir).parent.parent))
    device = resolve_device(config.device)
    held_out = found.splits.get("test", found.splits.get("val"))
    if held_out is None:
        raise ConfigError("pruning reports held-out accuracy: this run's data has no test or val split", "data")
    loader = BatchLoader(held_out, 500, build_preprocess(config, False, found), train=False)
    example = next(loader.batches())[0][:2]

    def accuracy(module: torch.nn.Module) -> float:
        return evaluate(module.to(device), loader, config, device, DistInfo())[1]

    before = accuracy(net)
    try:
        pruned = prune_channels(capture(net, example).graph_module, amount=amount)
    except ValueError as exc:
        raise ConfigError(f"amount: {exc}", "amount") from None
    pruned_acc = accuracy(pruned)
    size = tuple(example.shape[1:])
    totals = {name: summary(module, size).total for name, module in (("original", net), ("pruned", pruned))}
    tune = dataclasses.replace(config, epochs=epochs, lr=lr or config.lr / 4)
    result = Trainer(tune, model=pruned, progress=progress, data=data).run()
    return {
        "run_dir": str(run_dir), "finetune_run_dir": str(result.run_dir), "amount": amount, "epochs": epochs,
        "pruned_chains": len(reports(pruned)[-1].changed),
        "test_acc": {"original": before, "pruned": pruned_acc, "finetuned": held_out_accuracy(result.final)[1]},
        "params": {name: t["params"] for name, t in totals.items()},
        "macs": {name: t["macs"] for name, t in totals.items()},
    }
