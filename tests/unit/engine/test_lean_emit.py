"""The pipeline's lean hand-off of a one-sample microbatch (issue 12): a copy, as np.stack made."""

from __future__ import annotations

import numpy as np
import torch

from ferretd.config import TrainingConfig
from ferretd.engine.pipeline import PipelineLearner
from ferretd.engine.plan import Plan
from ferretd.models import mlp


def test_one_sample_microbatch_is_a_copy_of_the_callers_array() -> None:
    """The lane trains later, so the tensor must not alias the array the caller may reuse."""
    torch.manual_seed(0)
    learner = PipelineLearner(mlp((6,), 3, (8,)), Plan.uniform(2), TrainingConfig(lr=0.05), executor="virtual")
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    add = learner.core.add_microbatch
    learner.core.add_microbatch = lambda m, w, x, y, cbs: (seen.append((x, y)), add(m, w, x, y, cbs))[1]  # type: ignore[method-assign]
    for dtype in (np.float32, np.float64):
        x = np.arange(6, dtype=dtype)
        learner.learn_one(x, 2)
        x[:] = -1.0  # the caller reuses its buffer
    learner.flush()
    learner.close()
    assert len(seen) == 2
    for xt, yt in seen:
        assert xt.dtype == torch.float32 and xt.shape == (1, 6) and xt.is_contiguous()
        assert torch.equal(xt, torch.arange(6, dtype=torch.float32)[None])
        assert yt.dtype == torch.long and yt.tolist() == [2]
