"""How one microbatch runs through one stage: forward, recompute and backward on a pinned version.

Role: the math of a stage, free of scheduling and threads. The stage's ``nn.Module`` is only a
template: every call binds the tensors of an explicit version as its parameters (what
``torch.func.functional_call`` does), so a forward, a recompute (T1) and a backward all see
exactly the stashed weights.
(``torch.utils.checkpoint`` would silently recompute with whatever the module holds now.)

Parameter gradients come from ``torch.autograd.grad`` on per-call leaf views of the version
tensors (``detach().requires_grad_()`` shares storage, copies nothing); nothing ever touches a
shared ``.grad``, so lanes of different workers can run the same stage concurrently. Binding
tensors into a module is not thread-safe, so the template lives on the ``meta`` device and every
thread binds into its own copy (found by the jittered replay test: with one shared template,
``functional_call`` let two lanes compute with each other's weights). Slots are cleared after
each call so a private copy never keeps a version alive. Buffers
(e.g. BatchNorm statistics) are not versioned: the built-in models have none; a user model's
buffers are read from the template module as they are.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ferretd.engine.versions import Version

LossFn = Callable[[Tensor], Tensor]


@dataclass(eq=False)
class StageContext:
    """What a stage keeps for one in-flight microbatch between its forward and its backward."""

    version_number: int
    version: Version | None  # pinned version; None on an omitted stage (no stash)
    recompute: bool
    inp: Tensor | None = None  # the stage input (recompute) or its leaf (graph mode)
    out: Tensor | None = None  # graph root: stage output, or the loss at the last stage
    leaves: tuple[Tensor, ...] = field(default_factory=tuple)
    stale: bool = False

    def release(self) -> None:
        self.inp = None
        self.out = None
        self.leaves = ()


class StageRunner:
    """Blocks ``[start, end)`` of the model as one stage on one device."""

    def __init__(self, index: int, module: nn.Module, device: torch.device, *, last: bool) -> None:
        self.index = index
        module = module.to(device)
        self.device = device
        self.last = last
        self.names = [n for n, _ in module.named_parameters()]
        self.buffers = dict(module.named_buffers())
        self._initial = tuple(p.detach().clone() for _, p in module.named_parameters())
        # The template holds no weights (every call passes a version's tensors). functional_call
        # swaps tensors into the module it is given, so each thread gets its own copy.
        self.module = module.to("meta")
        self._local = threading.local()

    def initial_tensors(self) -> tuple[Tensor, ...]:
        """The module's weights at construction (handed over once, to the version store)."""
        tensors, self._initial = self._initial, ()
        return tensors

    def _bound(self) -> tuple[nn.Module, list[tuple[nn.Module, str]]]:
        """This thread's private copy of the template and its parameter slots."""
        local = self._local
        if getattr(local, "module", None) is None:
            module = copy.deepcopy(self.module)
            for name, buf in self.buffers.items():
                owner, _, attr = name.rpartition(".")
                module.get_submodule(owner)._buffers[attr] = buf
            slots = []
            for name in self.names:
                owner, _, attr = name.rpartition(".")
                slots.append((module.get_submodule(owner), attr))
            local.module, local.slots = module, slots
        return local.module, local.slots

    def _call(self, tensors: tuple[Tensor, ...], x: Tensor) -> Tensor:
        """``module(x)`` with exactly ``tensors`` as its parameters.

        Equivalent to ``torch.func.functional_call(module, params, x)``; because the module is
        private to this thread, the tensors are bound directly into its parameter slots (no swap
        and restore), which saves ~0.1 ms of Python per call on small models.
        """
        module, slots = self._bound()
        for (owner, attr), t in zip(slots, tensors, strict=True):
            owner._parameters[attr] = t  # type: ignore[assignment]
        try:
            return module(x)
        finally:
            for owner, attr in slots:
                owner._parameters[attr] = None

    def predict(self, tensors: tuple[Tensor, ...], x: Tensor) -> Tensor:
        with torch.no_grad():
            return self._call(tensors, x.to(self.device))

    def forward(self, ctx: StageContext, tensors: tuple[Tensor, ...], x: Tensor, loss_fn: LossFn | None) -> Tensor:
        """Run the forward; return the activation for the next stage (detached) or the loss."""
        x = x.to(self.device)
        if ctx.recompute:
            with torch.no_grad():
                out = self._call(tensors, x)
                if self.last and loss_fn is not None:
                    out = loss_fn(out)
            ctx.inp = x
            return out
        leaves = tuple(t.detach().requires_grad_(True) for t in tensors)
        x_leaf = x.detach().requires_grad_(self.index > 0)
        with torch.enable_grad():
            out = self._call(leaves, x_leaf)
            if self.last and loss_fn is not None:
                out = loss_fn(out)
        ctx.inp, ctx.out, ctx.leaves = x_leaf, out, leaves
        return out.detach()

    def backward(
        self,
        ctx: StageContext,
        tensors: tuple[Tensor, ...],
        grad_out: Tensor | None,
        loss_fn: LossFn | None,
    ) -> tuple[list[Tensor], Tensor | None]:
        """Parameter gradients at ``tensors`` (the pinned version) and the input gradient."""
        if ctx.recompute:
            assert ctx.inp is not None
            leaves = tuple(t.detach().requires_grad_(True) for t in tensors)
            x_leaf = ctx.inp.detach().requires_grad_(self.index > 0)
            with torch.enable_grad():
                out = self._call(leaves, x_leaf)
                if self.last and loss_fn is not None:
                    out = loss_fn(out)
        else:
            assert ctx.out is not None and ctx.inp is not None
            leaves, x_leaf, out = ctx.leaves, ctx.inp, ctx.out
        inputs = [*leaves, x_leaf] if self.index > 0 else list(leaves)
        if grad_out is not None:
            grad_out = grad_out.to(self.device)
        grads = torch.autograd.grad(out, inputs, grad_outputs=grad_out, allow_unused=True)
        ctx.release()
        param_grads = [
            g if g is not None else torch.zeros_like(t) for g, t in zip(grads[: len(leaves)], leaves, strict=True)
        ]
        grad_in = grads[len(leaves)] if self.index > 0 else None
        return param_grads, grad_in
