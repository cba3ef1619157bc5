"""Per-block profiling: times, parameter bytes and saved-activation bytes, cached on disk.

Role: section 4.1 of the Ferret notes. :class:`Profiler` runs every block of an
``nn.Sequential`` on its device with one microbatch and records, per block, the median forward
and backward time (after warm-up), the parameter bytes, the bytes autograd *saves* for backward,
and the block's input/output bytes. The result is a :class:`Profile`: plain data with an exact
JSON round-trip, consumed by the torch-free memory, rate and search modules.

Decisions:

* Saved activations are captured with ``torch.autograd.graph.saved_tensors_hooks`` and
  deduplicated by storage (``untyped_storage().data_ptr()``), counting the whole storage once:
  a block that saves the same tensor twice, or a view of it, pays once. Parameter storages are
  excluded (weights are counted by the memory model's version term).
* A block's saved bytes include its input when autograd saves it (``saves_input``) and its output
  when autograd saves it (``saves_output``, e.g. ReLU). When two consecutive blocks sit in one
  stage, block l's output *is* block l+1's input: :meth:`Profile.stage_activation_bytes` counts
  that storage once.
* The last block is profiled together with the cross-entropy loss the engine attaches to it, so
  its times and saved bytes include the loss.
* The backward time is that of ``torch.autograd.grad`` w.r.t. parameters and (for blocks after
  the first) the block input, as the engine computes it.
* Activation temporaries (issue 12): buffers a block allocates *inside* its forward or backward
  and frees before returning (e.g. a conv's im2col/grad buffers) are invisible to saved-tensor
  hooks but count against the box's memory. They are measured at the allocator:
  :func:`allocator_peak` runs the call once under the autograd profiler's memory recording (CPU;
  every alloc/free of the thread with its size and time: the legacy recorder, which gives the same
  numbers as ``torch.profiler``'s memory events without kineto's ~3 s start-up and its ``USDT``
  lines on stderr) or ``torch.cuda.max_memory_allocated`` (GPU) and returns
  the peak of live bytes above the level before the call and the net bytes left after it.
  ``forward_temp_bytes`` = forward peak - what stays (saved tensors, output);
  ``backward_temp_bytes`` = backward peak - what it returns (parameter and input gradients).
  Decision: the profiler's allocator events, not tracemalloc (blind to torch's allocator) nor RSS
  (glibc keeps freed pages); they cover only the calling thread, so they are used only here and
  in the single-threaded bench (``torch.profiler``), never in the daemon's lanes.
* Cache key: sha256 of the model structure (``repr`` plus parameter names/shapes/dtypes), input
  shape, microbatch, device and torch version. One JSON file per key under ``cache_dir``; a
  corrupt file is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
from torch import nn

log = structlog.get_logger(__name__)

PROFILE_FORMAT = 2


@dataclass(frozen=True)
class BlockProfile:
    """Measurements of one block for one microbatch."""

    forward_s: float
    backward_s: float
    param_bytes: int
    activation_bytes: int
    input_bytes: int
    output_bytes: int
    saves_input: bool = False
    saves_output: bool = False
    forward_temp_bytes: int = 0  # allocator peak inside the forward above what it keeps
    backward_temp_bytes: int = 0  # allocator peak inside the backward above the gradients it returns
    max_tensor_bytes: int = 0  # the block's largest parameter tensor (per-tensor temporaries of an update)


@dataclass(frozen=True)
class Profile:
    """Per-block profile of a model at a given input shape, microbatch and device."""

    blocks: tuple[BlockProfile, ...]
    input_shape: tuple[int, ...]
    microbatch: int
    device: str
    torch_version: str
    key: str = ""

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def total_param_bytes(self) -> int:
        return sum(b.param_bytes for b in self.blocks)

    @property
    def total_time_s(self) -> float:
        """Forward plus backward time of one microbatch through the whole model."""
        return sum(b.forward_s + b.backward_s for b in self.blocks)

    # ---------------------------------------------------------------- stage aggregates

    def stage_forward_s(self, start: int, end: int) -> float:
        return sum(b.forward_s for b in self.blocks[start:end])

    def stage_backward_s(self, start: int, end: int) -> float:
        return sum(b.backward_s for b in self.blocks[start:end])

    def cost_table(self, stages: list[tuple[int, int]]) -> dict[tuple[int, str], float]:
        """Profiled action costs ``{(stage, "F"|"B"|"U"): seconds}`` for stages given as block
        ranges (``plan.stage_blocks()``), as the engine's virtual clock takes them; U is free."""
        table: dict[tuple[int, str], float] = {}
        for j, (start, end) in enumerate(stages):
            table[(j, "F")] = self.stage_forward_s(start, end)
            table[(j, "B")] = self.stage_backward_s(start, end)
            table[(j, "U")] = 0.0
        return table

    def stage_temp_bytes(self, start: int, end: int) -> int:
        """Transient bytes of one F or B action over blocks ``[start, end)`` beyond the microbatch's
        saved activations (which the memory model counts in full for every microbatch in flight).

        One block runs at a time. While block l runs forward, the blocks after it have not saved
        anything yet; while it runs backward (holding the gradient of its output), the blocks after
        it have already freed theirs. So the excess is ``max_l (temp_l - sum_{i>l} A_i)``, at least 0.
        """
        best = 0
        later = 0
        for b in reversed(self.blocks[start:end]):
            fwd = b.forward_temp_bytes
            bwd = b.backward_temp_bytes + b.output_bytes
            best = max(best, max(fwd, bwd) - later)
            later += b.activation_bytes
        return best

    def stage_max_tensor_bytes(self, start: int, end: int) -> int:
        return max((b.max_tensor_bytes for b in self.blocks[start:end]), default=0)

    def stage_param_bytes(self, start: int, end: int) -> int:
        return sum(b.param_bytes for b in self.blocks[start:end])

    def stage_input_bytes(self, start: int) -> int:
        return self.blocks[start].input_bytes

    def stage_activation_bytes(self, start: int, end: int) -> int:
        """Saved bytes of one microbatch in blocks ``[start, end)``, shared boundaries once."""
        total = sum(b.activation_bytes for b in self.blocks[start:end])
        for l in range(start + 1, end):  # noqa: E741
            prev, cur = self.blocks[l - 1], self.blocks[l]
            if prev.saves_output and cur.saves_input:
                total -= cur.input_bytes
        return total

    # ---------------------------------------------------------------- data forms

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["blocks"] = [asdict(b) for b in self.blocks]
        data["input_shape"] = list(self.input_shape)
        data["format"] = PROFILE_FORMAT
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        return cls(
            blocks=tuple(BlockProfile(**b) for b in data["blocks"]),
            input_shape=tuple(int(d) for d in data["input_shape"]),
            microbatch=int(data["microbatch"]),
            device=str(data["device"]),
            torch_version=str(data["torch_version"]),
            key=str(data.get("key", "")),
        )

    @classmethod
    def from_json(cls, text: str) -> Profile:
        return cls.from_dict(json.loads(text))


def profile_key(model: nn.Module, input_shape: tuple[int, ...], microbatch: int, device: str) -> str:
    """Cache key: model structure, input shape, microbatch, device, torch version."""
    params = [(name, tuple(p.shape), str(p.dtype)) for name, p in model.named_parameters()]
    text = json.dumps([repr(model), params, list(input_shape), microbatch, device, torch.__version__, PROFILE_FORMAT])
    return hashlib.sha256(text.encode()).hexdigest()


def _storage(t: torch.Tensor) -> tuple[int, int] | None:
    try:
        s = t.untyped_storage()
        return s.data_ptr(), s.nbytes()
    except (RuntimeError, NotImplementedError):  # tensors without a storage (wrappers)
        return None


def _bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def allocator_peak(fn: Any, device: torch.device | str = "cpu") -> tuple[Any, int, int]:
    """Run ``fn()``; return its result, the peak of live allocator bytes above the level before
    the call, and the net bytes it left allocated (module docstring). Single-threaded calls only."""
    dev = torch.device(device)
    if dev.type == "cuda":  # pragma: no cover - no GPU in CI
        torch.cuda.synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        out = fn()
        torch.cuda.synchronize(dev)
        return out, torch.cuda.max_memory_allocated(dev) - base, torch.cuda.memory_allocated(dev) - base
    with AllocationRecorder() as rec:
        out = fn()
    return out, rec.peak, rec.net


class AllocationRecorder:
    """``with AllocationRecorder() as rec:`` records every CPU alloc/free of this thread (the
    autograd profiler's legacy memory recording); afterwards ``rec.peak`` is the peak of live bytes
    above the level at entry and ``rec.net`` what is still allocated. Frees of blocks allocated
    before entry are not reported by torch."""

    peak = 0
    net = 0

    def __enter__(self) -> AllocationRecorder:
        from torch.autograd import ProfilerConfig, ProfilerState  # type: ignore[attr-defined]

        experimental = torch.profiler._ExperimentalConfig()  # type: ignore[attr-defined]
        config = ProfilerConfig(ProfilerState.CPU, False, True, False, False, False, experimental)
        torch.autograd._enable_profiler_legacy(config)  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        records: Any = torch.autograd._disable_profiler_legacy()  # type: ignore[attr-defined]
        allocs = [r for thread in records for r in thread if r.kind() == "memory_alloc"]
        allocs.sort(key=lambda r: r.start_us())
        live = peak = 0
        for r in allocs:
            live += r.cpu_memory_usage()
            peak = max(peak, live)
        self.peak, self.net = peak, live


class Profiler:
    """Measures blocks of a Sequential; ``hits``/``misses`` count cache use."""

    def __init__(self, cache_dir: str | Path | None = None, *, warmup: int = 2, repeats: int = 5) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.warmup = max(1, warmup)  # the first autograd call pays one-off set-up costs
        self.repeats = repeats
        self.hits = 0
        self.misses = 0

    def profile(
        self, model: nn.Sequential, input_shape: tuple[int, ...], microbatch: int = 1, device: str = "cpu"
    ) -> Profile:
        """The cached profile if there is one, else measure and store it."""
        key = profile_key(model, tuple(input_shape), microbatch, device)
        path = self.cache_dir / f"profile-{key[:24]}.json" if self.cache_dir is not None else None
        if path is not None and path.exists():
            try:
                cached = Profile.from_json(path.read_text())
                if cached.key == key:
                    self.hits += 1
                    log.debug("profile cache hit", path=str(path))
                    return cached
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring unreadable profile cache", path=str(path), error=str(exc))
        self.misses += 1
        prof = self.measure(model, tuple(input_shape), microbatch, device, key=key)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(prof.to_json())
            tmp.replace(path)
            log.info("profile stored", path=str(path), blocks=prof.num_blocks)
        return prof

    def measure(
        self, model: nn.Sequential, input_shape: tuple[int, ...], microbatch: int, device: str, key: str = ""
    ) -> Profile:
        """Measure every block (no cache)."""
        dev = torch.device(device)
        blocks = list(model.children())
        model.to(dev)
        was_training = model.training
        model.train()
        gen = torch.Generator().manual_seed(0)
        x = torch.randn((microbatch, *input_shape), generator=gen).to(dev)
        results = []
        for i, block in enumerate(blocks):
            last = i == len(blocks) - 1
            result, x = self._measure_block(block, x, first=i == 0, last=last, dev=dev)
            results.append(result)
        model.train(was_training)
        return Profile(
            blocks=tuple(results),
            input_shape=tuple(input_shape),
            microbatch=microbatch,
            device=device,
            torch_version=torch.__version__,
            key=key,
        )

    # ---------------------------------------------------------------- one block

    def _forward(self, block: nn.Module, x: torch.Tensor, last: bool) -> tuple[torch.Tensor, torch.Tensor]:
        out = block(x)
        if last:
            if out.dim() == 2:
                target = torch.zeros(out.shape[0], dtype=torch.long, device=out.device)
                return out, nn.functional.cross_entropy(out, target)
            return out, out.float().square().mean()
        return out, out

    def _sync(self, dev: torch.device) -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def _measure_block(
        self, block: nn.Module, x: torch.Tensor, *, first: bool, last: bool, dev: torch.device
    ) -> tuple[BlockProfile, torch.Tensor]:
        params = [p for p in block.parameters() if p.requires_grad]
        param_ptrs = {s[0] for p in block.parameters() if (s := _storage(p)) is not None}
        x = x.detach().requires_grad_(not first)
        in_ptr = _storage(x)

        saved: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            s = _storage(t)
            if s is not None and s[0] not in param_ptrs:
                saved[s[0]] = max(saved.get(s[0], 0), s[1])
            return t.detach()  # not ``t``: a saved output would hold its own grad_fn (a cycle)

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, _loss = self._forward(block, x, last)
        out_ptr = _storage(out)
        activation_bytes = sum(saved.values())
        saves_input = in_ptr is not None and in_ptr[0] in saved
        saves_output = not last and out_ptr is not None and out_ptr[0] in saved

        wrt = params + ([x] if not first else [])
        (o, lo), fwd_peak, fwd_net = allocator_peak(lambda: self._forward(block, x, last), dev)
        bwd_temp = 0
        if wrt and lo.requires_grad:
            grad_out = None if last else torch.ones_like(o)
            grads, bwd_peak, _ = allocator_peak(
                lambda: torch.autograd.grad(lo, wrt, grad_outputs=grad_out, allow_unused=True), dev
            )
            bwd_temp = max(0, bwd_peak - sum(_bytes(g) for g in grads if g is not None))
            del grads
        del o, lo
        fwd_times: list[float] = []
        bwd_times: list[float] = []
        for rep in range(self.warmup + self.repeats):
            self._sync(dev)
            t0 = time.perf_counter()
            o, lo = self._forward(block, x, last)
            self._sync(dev)
            t1 = time.perf_counter()
            if wrt and lo.requires_grad:
                grad_out = None if last else torch.ones_like(o)
                torch.autograd.grad(lo, wrt, grad_outputs=grad_out, allow_unused=True)
            self._sync(dev)
            t2 = time.perf_counter()
            if rep >= self.warmup:
                fwd_times.append(t1 - t0)
                bwd_times.append(t2 - t1)
        profile = BlockProfile(
            forward_s=max(statistics.median(fwd_times), 1e-9),
            backward_s=max(statistics.median(bwd_times), 1e-9) if wrt else 0.0,
            param_bytes=sum(_bytes(p) for p in block.parameters()),
            activation_bytes=int(activation_bytes),
            input_bytes=_bytes(x),
            output_bytes=_bytes(out),
            saves_input=bool(saves_input),
            saves_output=bool(saves_output),
            forward_temp_bytes=int(max(0, fwd_peak - fwd_net)),
            backward_temp_bytes=int(bwd_temp),
            max_tensor_bytes=max((_bytes(p) for p in block.parameters()), default=0),
        )
        return profile, out.detach()
