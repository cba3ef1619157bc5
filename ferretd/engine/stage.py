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

Lean path (issue 12): when every leaf of the stage is a plain layer (Linear, Conv1d/2d, ReLU,
MaxPool1d/2d, AvgPool2d, Flatten, Identity, inference-free Dropout with p = 0) and no module has
hooks, the stage is pre-bound once into a flat list of ``torch.nn.functional`` calls over
parameter indices (:func:`prebind`). A call then runs the same kernels with the same arguments
(bitwise the same results, tested) without ``nn.Module.__call__``, slot binding or a per-thread
module copy; it touches no shared state, so lanes need no copies. Any other module falls back to
binding into the per-thread template copy.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ferretd.engine.versions import Version

LossFn = Callable[[Tensor], Tensor]
StageFn = Callable[[tuple[Tensor, ...], Tensor], Tensor]


def _leaves(module: nn.Module) -> list[nn.Module] | None:
    """Leaf modules in call order if ``module`` is nested Sequentials without hooks, else None."""
    hooks = (
        module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks,
    )  # fmt: skip
    if any(hooks):
        return None
    if isinstance(module, nn.Sequential):
        out: list[nn.Module] = []
        for child in module:
            sub = _leaves(child)
            if sub is None:
                return None
            out += sub
        return out
    if type(module).forward is nn.Sequential.forward or list(module.children()):
        return None
    return [module]


def _linear_step(wi: int, bi: int | None) -> StageFn:
    def step(t: tuple[Tensor, ...], x: Tensor) -> Tensor:
        return nn.functional.linear(x, t[wi], None if bi is None else t[bi])

    return step


def _conv_step(conv: Callable[..., Tensor], wi: int, bi: int | None, args: tuple[Any, ...]) -> StageFn:
    def step(t: tuple[Tensor, ...], x: Tensor) -> Tensor:
        return conv(x, t[wi], None if bi is None else t[bi], *args)

    return step


def _plain_step(fn: Callable[..., Tensor], args: tuple[Any, ...]) -> StageFn:
    """A parameter-free layer: ``fn(x, *args)``."""

    def step(t: tuple[Tensor, ...], x: Tensor) -> Tensor:
        return fn(x, *args)

    return step


def prebind(module: nn.Module, names: list[str]) -> StageFn | None:
    """A function ``f(tensors, x)`` equal to ``module(x)`` with ``tensors`` (in ``names`` order) as
    its parameters, or None when some leaf is not a plain layer (module docstring)."""
    leaves = _leaves(module)
    if leaves is None:
        return None
    index = {id(p): i for i, (_, p) in enumerate(module.named_parameters())}
    if len(index) != len(names):
        return None
    F = nn.functional
    steps: list[Callable[[tuple[Tensor, ...], Tensor], Tensor]] = []
    for leaf in leaves:
        if any(b is not None for b in leaf.buffers()):
            return None
        kind = type(leaf)
        if kind is nn.Linear:
            wi, bi = index[id(leaf.weight)], index[id(leaf.bias)] if leaf.bias is not None else None
            steps.append(_linear_step(wi, bi))
        elif kind in (nn.Conv1d, nn.Conv2d) and leaf.padding_mode == "zeros":
            wi, bi = index[id(leaf.weight)], index[id(leaf.bias)] if leaf.bias is not None else None
            conv = F.conv1d if kind is nn.Conv1d else F.conv2d
            args = (leaf.stride, leaf.padding, leaf.dilation, leaf.groups)
            steps.append(_conv_step(conv, wi, bi, args))
        elif kind is nn.ReLU and not leaf.inplace:
            steps.append(lambda t, x: torch.relu(x))
        elif kind in (nn.MaxPool1d, nn.MaxPool2d) and not leaf.return_indices:
            pool = F.max_pool1d if kind is nn.MaxPool1d else F.max_pool2d
            margs = (leaf.kernel_size, leaf.stride, leaf.padding, leaf.dilation, leaf.ceil_mode)
            steps.append(_plain_step(pool, margs))
        elif kind is nn.AvgPool2d and leaf.divisor_override is None:
            aargs = (leaf.kernel_size, leaf.stride, leaf.padding, leaf.ceil_mode, leaf.count_include_pad)
            steps.append(_plain_step(F.avg_pool2d, aargs))
        elif kind is nn.Flatten:
            dims = (leaf.start_dim, leaf.end_dim)
            steps.append(_plain_step(torch.flatten, dims))
        elif kind is nn.Identity or (kind is nn.Dropout and leaf.p == 0.0):
            continue
        else:
            return None
    if len(steps) == 1:
        return steps[0]

    def run(tensors: tuple[Tensor, ...], x: Tensor) -> Tensor:
        for step in steps:
            x = step(tensors, x)
        return x

    return run


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
    predicted: list[int] | None = None  # last stage: the class its forward gave each row

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
        self.prebound = prebind(module, self.names)
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
        and restore), which saves ~0.1 ms of Python per call on small models. A pre-bound stage
        (module docstring) skips the module entirely.
        """
        if self.prebound is not None:
            return self.prebound(tensors, x)
        module, slots = self._bound()
        for (owner, attr), t in zip(slots, tensors, strict=True):
            owner._parameters[attr] = t  # type: ignore[assignment]
        try:
            out: Tensor = module(x)
            return out
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
                    ctx.predicted = out.argmax(1).tolist()
                    out = loss_fn(out)
            ctx.inp = x
            return out
        leaves = tuple(t.detach().requires_grad_(True) for t in tensors)
        x_leaf = x.detach().requires_grad_(self.index > 0)
        with torch.enable_grad():
            out = self._call(leaves, x_leaf)
            if self.last and loss_fn is not None:
                ctx.predicted = out.detach().argmax(1).tolist()
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
