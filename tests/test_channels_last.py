"""The shared prefix runs channels-last from the first convolution on, and computes the same."""

from __future__ import annotations

import torch

from innerloop.learner import Learner, channels_last
from innerloop.models import ArchConfig


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
