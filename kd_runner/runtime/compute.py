"""How the engine computes on its device: precision (autocast), memory format, torch.compile, backends.

One `Compute` per run, resolved from the config and the device:

- `precision`: `fp32`, or autocast to `bf16` / `fp16` for the forward passes (losses and metrics stay in
  float32; `fp16` training scales the loss with a GradScaler so small gradients do not underflow).
  `auto` is bf16 on CUDA (fp16 on GPUs without bf16) and fp32 elsewhere.
- `memory_format`: `channels_last` stores conv nets' weights and input batches as NHWC, the layout
  tensor cores, cuDNN and oneDNN (CPU) are fastest with. `auto` is channels_last on CUDA and CPU
  (measured faster for resnets on CPU too: docs/benchmarks.md) and contiguous on MPS.
- `compile`: `torch.compile` each network in place. Compiled code is cached per process by the network's
  code, so the networks of later epochs and of later jobs of a sweep reuse it (no recompilation).
- `threads`: the CPU threads of torch's operators. A CPU result depends on it (reductions split
  differently in the last digits), so it is part of what the cache keys see; `0` (the config's default)
  is what the environment gives the process (`process.environment_threads`: OMP_NUM_THREADS, torchrun's
  share of the cores, all cores), and `threads_from` says which.
- on CUDA, `cudnn.benchmark` picks the fastest convolution algorithms for the fixed batch shapes, unless
  `deterministic` asks for reproducible kernels instead.
- evaluation batches: large on accelerators (1024 images); on a CPU small enough that a conv net's
  activations stay in cache (about 32K input values per batch; measured in docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from kd_runner.errors import ConfigError, UserError
from kd_runner.runtime.process import environment_threads

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an explicit device that is absent is a user error."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise UserError(f"device={name!r} is not available on this machine: use device=auto or device=cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Compute:
    device: torch.device
    precision: str = "fp32"  # fp32 | bf16 | fp16 (resolved, never auto)
    memory_format: str = "contiguous"  # channels_last | contiguous (resolved, never auto)
    compile: bool = False
    threads: int = 0  # torch's CPU threads (resolved: > 0; 0 leaves the process's setting)
    threads_from: str = "threads="  # where the count comes from (the config, or the environment's setting)

    @classmethod
    def resolve(
        cls,
        device: torch.device,
        precision: str = "auto",
        memory_format: str = "auto",
        compile: bool = False,
        threads: int = 0,
    ):
        """The settings for `device`, with every `auto` replaced by that device's default and `threads=0` by
        the environment's count (a bad OMP_NUM_THREADS is one line)."""
        cuda = device.type == "cuda"
        if precision == "auto":
            precision = ("bf16" if _native_bf16() else "fp16") if cuda else "fp32"
        if cuda and precision == "bf16" and not _native_bf16():
            raise ConfigError("precision", precision, "fp16 or fp32 on this GPU (it has no bf16 support)")
        if memory_format == "auto":
            memory_format = "channels_last" if device.type in ("cuda", "cpu") else "contiguous"
        threads, threads_from = (threads, "threads=") if threads else environment_threads()
        return cls(device, precision, memory_format, compile, threads, threads_from)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the forward passes' matmuls and convolutions."""
        return _DTYPES.get(self.precision, torch.float32)

    def autocast(self):
        """The context for forward passes: autocast to bf16/fp16, or nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler for one training stage; a pass-through unless precision is fp16.

        While it searches for its scale, the scaler skips optimizer steps whose gradients overflowed;
        the learning-rate scheduler still steps once per batch, so torch's warning about the order of
        the two is expected and silenced.
        """
        if self.precision == "fp16":
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def prepare(self, model: nn.Module) -> nn.Module:
        """Move `model` to the device in this memory format and compile it in place (state dict keys unchanged)."""
        model.to(self.device)
        if self.memory_format == "channels_last" and any(isinstance(m, nn.Conv2d) for m in model.modules()):
            model.to(memory_format=torch.channels_last)
        if self.compile:
            model.compile()
        return model

    def format_batch(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch in the memory format the networks expect."""
        if self.memory_format == "channels_last" and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def eval_batch_size(self, image_numel: int) -> int:
        """Images per evaluation batch, for images of `image_numel` values each."""
        if self.device.type != "cpu":
            return 1024
        return max(16, min(1024, 2**15 // max(image_numel, 1)))

    def configure_backends(self, deterministic: bool = False) -> None:
        """The process's CPU threads, and cuDNN's fastest algorithms or, with `deterministic`, the same
        results from run to run on the same machine and software: deterministic cuDNN algorithms, cuBLAS's
        fixed workspace and torch.use_deterministic_algorithms (an op with no deterministic kernel then
        raises). Process-wide."""
        if self.threads:
            torch.set_num_threads(self.threads)
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(deterministic)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = not deterministic
            torch.backends.cudnn.deterministic = deterministic

    def describe(self) -> dict:
        """The settings that change the numbers, as plain values (result.json, cache keys): on a CPU the
        thread count too."""
        described = {
            "device": self.device.type,
            "precision": self.precision,
            "memory_format": self.memory_format,
            "compile": self.compile,
        }
        if self.device.type == "cpu":
            described["threads"] = self.threads
        return described


def _native_bf16() -> bool:
    """Whether this GPU computes bf16 in hardware (torch counts an emulation by default, which is slow)."""
    return torch.cuda.is_bf16_supported(including_emulation=False)
