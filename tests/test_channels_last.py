"""The shared prefix runs channels-last from the first convolution on, calls its layers as their
functional ops, and computes the same."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from innerloop.learner import Learner, channels_last
from innerloop.models import ArchConfig, apply_layer, body_parameters, build_body


def test_one_channel_tensors_get_channels_last_strides_and_keep_their_values() -> None:
    x = torch.rand(3, 1, 28, 28)
    assert x.is_contiguous(memory_format=torch.channels_last)  # PyTorch's view: already is
    converted = channels_last(x)
    assert converted.stride() == (28 * 28, 1, 28, 1)  # MKL-DNN's view now agrees
    assert torch.equal(converted, x)
    wide = torch.rand(2, 8, 5, 5)
    assert channels_last(wide).stride() == (200, 1, 40, 8)
    assert channels_last(channels_last(wide)) is not wide  # converted once, then passed through
    done = channels_last(wide)
    assert channels_last(done) is done


def test_prefix_equals_the_plain_body_on_pieces_of_a_large_batch() -> None:
    """40 drawings go through the prefix in pieces, channels-last; the NCHW body is the truth."""
    learner = Learner.create(ArchConfig(kind="conv4", filters=16), head="proto", seed=5)
    learner = learner.with_scope("head")
    shared = learner.split_shared(learner.params, learner.step_sizes)
    assert shared is not None
    x = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        prefix = shared.prefix(x)
        plain = learner.features(learner.params, x)
    assert prefix.shape == plain.shape
    assert torch.allclose(prefix, plain, atol=1e-5)
    assert prefix.abs().sum() > 0


@pytest.mark.parametrize(
    "arch",
    [
        ArchConfig(kind="conv4", filters=16),
        ArchConfig(kind="conv4", filters=16, warp="residual"),
        ArchConfig(kind="mlp", hidden=(8, 8)),
    ],
    ids=["conv4", "conv4-warp", "mlp"],
)
def test_apply_layer_is_functional_call_bit_for_bit_with_gradients(arch: ArchConfig) -> None:
    """The prefix calls layers as their functional ops; values and gradients are unchanged."""
    body = build_body(arch)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in body_parameters(body).items()}
    shape = (6, 1, 28, 28) if arch.kind == "conv4" else (6, 1)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(2))
    outs = []
    for call in (apply_layer, lambda layer, p, h: functional_call(layer, p, (h,))):
        h = x
        for i, layer in enumerate(body):
            mine = {k.split(".", 2)[2]: v for k, v in params.items() if k.split(".")[1] == str(i)}
            h = call(layer, mine, h)
        grads = torch.autograd.grad(h.square().sum(), list(params.values()))
        outs.append((h.detach(), grads))
    (ours, our_grads), (theirs, their_grads) = outs
    assert torch.equal(ours, theirs)
    for a, b in zip(our_grads, their_grads, strict=True):
        assert torch.equal(a, b)
