"""Training checkpoints: everything a stage needs to continue exactly where it stopped.

A stage writes its checkpoint atomically after every epoch, and at the safe point between two batches
where a SIGTERM/SIGINT stops it. The file holds the model, optimizer, scheduler (and fp16 loss scaler)
states, the global RNG states (torch, CUDA, numpy, python), the position in training (`EpochPosition`: the epoch in
progress, the shuffling generator's state before its permutation, the batches already done and their
loss tally) and the per-epoch rows so far. It is tied to the digest of what the stage trains, and is
read with `weights_only=True` like every other file the runner loads.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kd_runner.errors import UserError
from kd_runner.runtime.rng import rng_states, set_rng_states
from kd_runner.store.files import load_failure_reason, save_torch
from kd_runner.store.state_dicts import load_exact

log = logging.getLogger(__name__)
FORMAT = 1


@dataclass
class EpochPosition:
    """Where a stage stands: the epoch in progress (1-based) and how far into it.

    Restoring `generator_state` and skipping `batches` batches replays the epoch's shuffling and
    continues it; `loss_sum` and `samples` carry its training-loss tally; `lr` is the learning rate at
    the epoch's start, which its row reports.
    """

    epoch: int
    lr: float
    generator_state: torch.Tensor
    batches: int = 0
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    samples: int = 0
    draw_state: torch.Tensor | None = None  # the generator after the last batch done (augmentation draws)

    @classmethod
    def start(cls, epoch: int, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> EpochPosition:
        return cls(epoch, optimizer.param_groups[0]["lr"], generator.get_state())

    def count_batch(self, loss_sum: torch.Tensor, samples: int, generator: torch.Generator | None) -> None:
        """One more batch done: its summed loss and size join the tally; with augmentation (`generator`
        given) the generator's state is kept so a resumed pass continues its draws."""
        self.batches += 1
        self.loss_sum = self.loss_sum + loss_sum
        self.samples += samples
        self.draw_state = generator.get_state() if generator is not None else None

    def to_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "lr": self.lr,
            "generator_state": self.generator_state,
            "batches": self.batches,
            "loss_sum": self.loss_sum.detach().cpu(),
            "samples": self.samples,
            "draw_state": self.draw_state,
        }


class StageCheckpoint:
    """The checkpoint file of one stage (`name`: teacher or student) for one config `digest`."""

    def __init__(self, path: Path | str, digest: str, name: str):
        self.path, self.digest, self.name = Path(path), digest, name

    def save(self, model, optimizer, scheduler, position: EpochPosition, rows: list[dict], scaler=None) -> None:
        save_torch(
            {
                "format": FORMAT,
                "digest": self.digest,
                "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},  # fp16 loss scale ({} unused)
                "position": position.to_dict(),
                "rng": rng_states(),
                "rows": rows,
            },
            self.path,
        )

    def restore(
        self, model, optimizer, scheduler, device: torch.device, scaler=None
    ) -> tuple[EpochPosition, list[dict]] | None:
        """Load the saved state into the given objects; None when there is no usable checkpoint.

        A checkpoint that cannot be read is reported in one line and removed (the stage starts over);
        one of another config or another model is refused with a UserError.
        """
        state = self._read()
        if state is None:
            return None
        if state["digest"] != self.digest:
            raise UserError(
                f"{self.path} is a checkpoint of another config (digest {state['digest']}, this config {self.digest}): "
                "use another run directory, or delete it"
            )
        load_exact(model, state["model"], f"{self.path} does not match the {self.name} model")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_states(state["rng"])
        p = state["position"]
        keys = ("epoch", "lr", "generator_state", "batches", "loss_sum", "samples", "draw_state")
        position = EpochPosition(**{k: p[k] for k in keys})
        position.loss_sum = position.loss_sum.to(device)
        where = f"epoch {position.epoch} (after {position.batches} batches)"
        log.info("%s: resuming from %s at %s", self.name, self.path, where)
        return position, state["rows"]

    def _read(self) -> dict | None:
        """The saved state, or None when there is none or it is unreadable (then it is reported and removed)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if state.get("format") != FORMAT:
                raise ValueError(f"format {state.get('format')!r}, expected {FORMAT}")
            return state
        except Exception as exc:  # damaged on disk: the epochs it held are lost, not the run
            reason = load_failure_reason(exc)
            log.warning(
                "%s checkpoint %s is unreadable (%s): removed, the stage starts over", self.name, self.path, reason
            )
            self.remove()
            return None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
