"""The training loop: deterministic batches, atomic checkpoints, exact resume, NaN guard, DDP, AMP."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from branchgraph.analysis.branch_stats import epoch_summary
from branchgraph.data import BatchLoader
from branchgraph.errors import CheckpointError, ConfigError, Interrupted, TrainingDiverged
from branchgraph.hardware import resolve_device
from branchgraph.heap import apply_heap_policy
from branchgraph.kernels import to_channels_last
from branchgraph.memory.checkpointing import CheckpointPlan
from branchgraph.training.config import TrainConfig
from branchgraph.training.data_source import data_label, training_data
from branchgraph.training.distributed import all_reduce_sum, init_distributed, shutdown
from branchgraph.training.evaluation import evaluate
from branchgraph.training.loggers import TensorBoardLog, require_tensorboard, stalled
from branchgraph.training.report import TrainResult, write_outputs
from branchgraph.training.run_state import (
    CHECKPOINT_NAME,
    atomic_write_bytes,
    make_run_dir,
    save_checkpoint,
)
from branchgraph.training.setup import (
    autocast_for,
    branch_recorder,
    build_model,
    build_preprocess,
    compute_loss,
    ema_update,
    fit_to_data,
    input_size,
    make_optimizer,
    make_scheduler,
    plan_memory,
    stretched_schedule,
    to_device,
    tune_precision,
)


class Trainer:
    """One training run in one directory; ``run()`` trains to ``config.epochs`` from wherever it stands.

    ``model`` replaces the registry model the config names (a pruned one, say); such a run cannot be resumed
    from its checkpoint, which is rebuilt from the registry.
    """

    def __init__(self, config: TrainConfig, run_dir: Path | None = None, state: dict[str, Any] | None = None,
                 progress: bool = True, model: nn.Module | None = None, data: Any = None) -> None:
        self.config = config.validate()
        self._start_process()
        self._make_loaders(data)
        config = self.config  # with the data's label, and a registry model's channels and classes set from the data
        self.model = (model if model is not None else build_model(config, self.input_size, self.classes)
                      ).to(self.device)
        self.branch_stats = branch_recorder(self.model, self.input_size) if config.branch_stats else None
        self.progress = progress
        self.tuning: dict[str, Any] | None = None
        if state is None and config.deterministic:
            # A deterministic run must not depend on timings: no measurement, fp32 and channels_last unless given.
            self.config = dataclasses.replace(
                config, precision="fp32" if config.precision == "auto" else config.precision,
                channels_last=True if config.channels_last is None else config.channels_last)
        elif state is None and (config.precision == "auto" or config.channels_last is None):
            self.tuning, self.config = tune_precision(self.model, config, self.device, self.info, self.input_size,
                                                      self.classes, config.epochs * len(self.train_loader))
        timed_precision = self.tuning is not None and config.precision == "auto"
        config = self.config
        if config.channels_last:
            self.model = to_channels_last(self.model)
        self.memory_plan: CheckpointPlan | None = None
        if config.memory_budget is not None or config.memory_lossy is not None:
            self.model, self.memory_plan = plan_memory(self.model, config, self.device, self.info, self.input_size,
                                                       tuned=timed_precision)
        self.branch_records: list[dict[str, Any]] = []
        self.ema = (AveragedModel(self.model, multi_avg_fn=ema_update(config.ema_decay), use_buffers=True)
                    if config.ema_decay is not None else None)
        self.optimizer = make_optimizer(self.model, config)
        total_steps = config.epochs * len(self.train_loader)
        self.scheduler = make_scheduler(self.optimizer, config, total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.precision == "fp16")
        self.epoch, self.step, self.metrics = 0, 0, []
        self.epoch_sums = torch.zeros(3, dtype=torch.float64)
        self.elapsed = 0.0
        self.stop_requested = self.stopped_early = False
        if state is not None:
            self._load_state(state)
        self.run_dir = run_dir if run_dir is not None else make_run_dir(config, self.info)
        self.log = TensorBoardLog(self.run_dir) if config.log == "tensorboard" and self.info.is_main else None
        if self.tuning is not None and self.progress:
            tqdm.write(self.tuning["text"], file=sys.stderr)
        self.ddp_model: nn.Module = (
            DistributedDataParallel(self.model, device_ids=[self.info.local_rank] if self.device.type == "cuda"
                                    else None)
            if self.info.enabled else self.model
        )

    def _start_process(self) -> None:
        """Device, process group, threads, heap policy and determinism, as the config asks."""
        config = self.config
        self.device = resolve_device(config.device)
        self.info = init_distributed(self.device.type)
        if config.threads:
            torch.set_num_threads(config.threads)
        apply_heap_policy(config.heap)
        if config.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        if self.device.type == "cuda":
            torch.cuda.set_device(self.info.local_rank)
            self.device = torch.device("cuda", self.info.local_rank)

    def _make_loaders(self, data: Any) -> None:
        """The data (``data`` given in Python, else the config's), the model's input size and class count from it,
        and this rank's share of the training batches, with the validation and test loaders."""
        found = training_data(self.config, data)
        self.config = fit_to_data(dataclasses.replace(self.config, data=data_label(data, self.config.data)), found)
        self.input_size, self.classes = input_size(self.config, found), len(found.classes)
        config, info, splits = self.config, self.info, found.splits
        if config.early_stop is not None and "val" not in splits:
            raise ConfigError("early_stop watches the validation accuracy, and this data has no val split: set "
                              "val_size above 0 or add a val/ folder", "early_stop")
        if config.log == "tensorboard":
            require_tensorboard()  # before the run directory exists
        if config.batch_size % info.world_size:
            raise ConfigError(f"batch_size {config.batch_size} (the global batch) must be divisible by the "
                              f"{info.world_size} processes", "batch_size")
        self.train_loader = BatchLoader(splits["train"], config.batch_size, build_preprocess(config, True, found),
                                        train=True, seed=config.seed, rank=info.rank, world_size=info.world_size)
        if len(self.train_loader) == 0:
            raise ConfigError(f"limit {config.limit} leaves fewer samples than one batch of {config.batch_size}",
                              "limit")
        self.eval_loaders = {name: BatchLoader(splits[name], 500, build_preprocess(config, False, found), train=False,
                                               rank=info.rank, world_size=info.world_size)
                             for name in ("val", "test") if name in splits}

    def _state(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "epoch_sums": self.epoch_sums.clone(),
            "metrics": self.metrics,
            "elapsed": self.elapsed,
            "branch_records": self.branch_records,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def _load_state(self, state: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(stretched_schedule(state["scheduler"], self.scheduler.state_dict()))
            self.scaler.load_state_dict(state["scaler"])
            self.epoch, self.step = int(state["epoch"]), int(state["step"])
            self.epoch_sums = state["epoch_sums"].clone()
            self.metrics = list(state["metrics"])
            self.elapsed = float(state["elapsed"])
            self.branch_records = list(state.get("branch_records", []))
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            torch.set_rng_state(state["rng"])
            if state["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"checkpoint does not match its model/settings: {str(exc).splitlines()[0]}") from None

    def save(self) -> None:
        """Write the checkpoint (rank 0 only), atomically."""
        if self.info.is_main:
            save_checkpoint(self.run_dir / CHECKPOINT_NAME, self._state())

    def _write_outputs(self, status: str) -> None:
        if self.info.is_main:
            write_outputs(self.run_dir, asdict(self.config), self.metrics,
                          self.branch_records if self.branch_stats is not None else None, status)

    def run(self) -> TrainResult:
        """Train the remaining epochs; Ctrl-C stops at the next step boundary, saves and raises Interrupted.

        The stop waits for the step to finish because a step cut short would already have updated
        BatchNorm running statistics, and the resumed run would then apply that step twice.
        A second Ctrl-C aborts at once and leaves the last checkpoint as it was.
        """
        if self.info.is_main:
            atomic_write_bytes(self.run_dir / "config.json", (self.config.to_json() + "\n").encode())
            if self.tuning is not None:
                text = json.dumps(self.tuning, indent=2, sort_keys=True) + "\n"
                atomic_write_bytes(self.run_dir / "tuning.json", text.encode())
            if self.memory_plan is not None:
                text = json.dumps(self.memory_plan.to_dict(), indent=2, sort_keys=True) + "\n"
                atomic_write_bytes(self.run_dir / "memory_plan.json", text.encode())
            self._write_outputs("running")
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._request_stop)
        try:
            while self.epoch < self.config.epochs and not self.stopped_early:
                self._train_epoch()
                if self.stop_requested:
                    break
            if self.stop_requested:
                self.save()
                self._write_outputs("interrupted")
                raise Interrupted(self.run_dir, self.epoch, self.step)
            self._write_outputs(self._finished())
        except TrainingDiverged:
            self._write_outputs("stopped: the loss diverged")
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            if self.log is not None:
                self.log.close()
            shutdown(self.info)
        return TrainResult(self.run_dir, self.metrics, self.config, self.tuning, self.info.is_main)

    def _finished(self) -> str:
        if not self.stopped_early:
            return "finished"
        return (f"finished: stopped early after epoch {self.epoch}, the validation accuracy not having improved "
                f"for {self.config.early_stop} epochs")

    def _request_stop(self, signum: int, frame: object) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True

    def _train_epoch(self) -> None:
        c, loader = self.config, self.train_loader
        loader.epoch = self.epoch
        self.ddp_model.train()
        start, started = self.step, time.perf_counter()
        bar = tqdm(total=len(loader), initial=start, desc=f"epoch {self.epoch + 1}/{c.epochs}", unit="batch",
                   disable=not (self.progress and self.info.is_main), leave=False, dynamic_ncols=True)
        for x, y in loader.batches(start):
            x, y = to_device(x, y, self.device, c.channels_last)
            global_step = self.epoch * len(loader) + self.step
            stats = self.branch_stats if global_step % (c.branch_stats or 1) == 0 else None
            with stats.recording() if stats is not None else nullcontext():
                with autocast_for(c, self.device):
                    loss, logits = compute_loss(self.ddp_model(x), y, c.label_smoothing)
                self._check_finite(loss)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
            if stats is not None:
                scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
                self.branch_records.append({"epoch": self.epoch + 1, "step": self.step + 1, "global_step": global_step,
                                            "loss": loss.item(), "blocks": stats.collect(scale)})
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
            self.epoch_sums += torch.tensor(
                [loss.item() * len(y), (logits.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64
            )
            rate = (self.step - start) * c.batch_size / (time.perf_counter() - started)
            bar.update()
            bar.set_postfix(loss=f"{self.epoch_sums[0] / self.epoch_sums[2]:.3f}",
                            acc=f"{self.epoch_sums[1] / self.epoch_sums[2]:.3f}", img_s=f"{rate:.0f}")
            if self.stop_requested and self.step < len(loader):
                self.elapsed += time.perf_counter() - started  # the resumed epoch adds only what it trains
                bar.close()
                return
        bar.close()
        train_time = time.perf_counter() - started
        self._end_epoch(train_time, (self.step - start) * c.batch_size)

    def _check_finite(self, loss: torch.Tensor) -> None:
        finite = torch.tensor([float(math.isfinite(loss.item()))])
        if all_reduce_sum(finite, self.info).item() < self.info.world_size:  # every rank stops together
            last = f"epoch {self.epoch}" if self.epoch else "none yet"
            raise TrainingDiverged(
                f"loss became {loss.item()} at epoch {self.epoch + 1} step {self.step + 1}; stopped, last good "
                f"checkpoint ({last}) kept in {self.run_dir}; lower lr or use precision fp32", "lr"
            )

    def _end_epoch(self, train_time: float, images: int) -> None:
        sums = all_reduce_sum(self.epoch_sums.clone(), self.info)
        record: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "train_loss": float(sums[0] / sums[2]),
            "train_acc": float(sums[1] / sums[2]),
            "lr": self.optimizer.param_groups[0]["lr"],
            "world_size": self.info.world_size,
        }
        for name, eval_loader in self.eval_loaders.items():
            record[f"{name}_loss"], record[f"{name}_acc"] = evaluate(
                self.ema.module if self.ema is not None else self.model, eval_loader, self.config, self.device,
                self.info)
        record.update(epoch_summary([r for r in self.branch_records if r["epoch"] == self.epoch + 1]))
        self.elapsed += train_time
        record.update(time_s=round(train_time, 2), images_per_s=round(images / max(train_time, 1e-9), 1),
                      elapsed_s=round(self.elapsed, 2))
        self.metrics.append(record)
        if self.log is not None:
            self.log.epoch(record, [r for r in self.branch_records if r["epoch"] == self.epoch + 1])
        self.stopped_early = self.config.early_stop is not None and stalled(self.metrics, self.config.early_stop)
        self.epoch, self.step = self.epoch + 1, 0
        self.epoch_sums.zero_()
        self.save()
        self._write_outputs("running" if self.epoch < self.config.epochs and not self.stopped_early
                            else self._finished())
        if self.info.is_main and self.progress:
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}
            tqdm.write(json.dumps(shown), file=sys.stderr)
