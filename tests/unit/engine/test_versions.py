"""Weight versions: immutability, reference counts, deltas kept only while needed, SGD bitwise."""

from __future__ import annotations

import torch

from ferretd.engine.versions import VersionStore, sgd_step


def _store(keep_deltas=True):
    return VersionStore((torch.zeros(3), torch.ones(2)), keep_deltas=keep_deltas)


def test_publish_is_out_of_place_and_drops_unpinned_versions():
    store = _store()
    v0 = store.current
    v1 = store.publish(tuple(t + 1 for t in v0.tensors))
    assert v1.number == 1 and torch.equal(v0.tensors[0], torch.zeros(3))
    assert store.live_numbers() == [1]


def test_pinned_versions_live_until_unpinned_and_deltas_follow_them():
    store = _store()
    v0 = store.pin()
    store.publish(tuple(t + 1 for t in store.current.tensors))
    v1 = store.pin()
    store.publish(tuple(t + 2 for t in store.current.tensors))
    assert store.live_numbers() == [0, 1, 2]
    deltas = store.deltas_since(0)
    assert len(deltas) == 2
    assert torch.equal(deltas[0][0], torch.ones(3)) and torch.equal(deltas[1][1], torch.full((2,), 2.0))
    total = [sum(d[i] for d in deltas) for i in range(2)]
    assert all(torch.equal(t, c - p) for t, c, p in zip(total, store.current.tensors, v0.tensors, strict=True))
    store.unpin(v0)
    assert store.live_numbers() == [1, 2]
    assert len(store.deltas_since(1)) == 1
    assert 0 not in store._deltas
    store.unpin(v1)
    assert store.live_numbers() == [2] and store._deltas == {}
    assert store.max_live == 3


def test_no_deltas_without_a_compensator_or_a_pin():
    store = _store(keep_deltas=False)
    v0 = store.pin()
    store.publish(tuple(t + 1 for t in store.current.tensors))
    assert store._deltas == {}
    store.unpin(v0)
    kept = _store()
    kept.publish(tuple(t + 1 for t in kept.current.tensors))
    assert kept._deltas == {}


def test_bytes_held_counts_versions_and_deltas():
    store = _store()
    one = store.bytes_held()
    assert one == 5 * 4
    v0 = store.pin()
    store.publish(tuple(t + 1 for t in store.current.tensors))
    assert store.bytes_held() == 3 * one
    store.unpin(v0)
    assert store.bytes_held() == one


def test_pin_if_current():
    store = _store()
    assert store.pin_if_current(0) is not None
    store.publish(tuple(store.current.tensors))
    assert store.pin_if_current(0) is None


def test_sgd_step_is_bitwise_torch_sgd():
    torch.manual_seed(0)
    for momentum, wd in ((0.0, 0.0), (0.9, 0.0), (0.9, 1e-2), (0.0, 1e-2)):
        params = [torch.randn(4, 3), torch.randn(3)]
        ref = [p.clone().requires_grad_() for p in params]
        opt = torch.optim.SGD(ref, lr=0.1, momentum=momentum, weight_decay=wd)
        ours = tuple(p.clone() for p in params)
        buffers = [None, None]
        for _ in range(4):
            grads = [torch.randn_like(p) for p in params]
            for r, g in zip(ref, grads, strict=True):
                r.grad = g.clone()
            opt.step()
            ours = sgd_step(ours, grads, buffers, lr=0.1, momentum=momentum, weight_decay=wd)
        assert all(torch.equal(a, b.detach()) for a, b in zip(ours, ref, strict=True))
