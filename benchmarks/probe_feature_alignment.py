"""Does fitting a map on the frozen features beat the prototype answer? (issue 13's probe)

Pre-classifier alignment, as URL and TSA (Li et al. 2021, 2022) use for unseen domains: a
linear map on the checkpoint's un-adapted features, initialised to the identity, fitted per
episode on the support set with a nearest-centroid loss (the prototypes are recomputed from the
mapped support at every step); the queries are then classified against the mapped prototypes.
Printed beside the prototype answer on the same fixed episodes, with the 95% interval of the
per-episode gain. Variants: Euclidean or scaled-cosine logits, Adadelta (URL's choice) or
Adam, and a leave-one-out support loss (each support drawing against its class prototype
without it: a fitted support set gives the plain loss no signal).

    python benchmarks/probe_feature_alignment.py checkpoints/omniglot.safetensors   # shifted
    python benchmarks/probe_feature_alignment.py checkpoints/quickdraw.safetensors  # in-domain

(Quick Draw validation classes by default: ``--dataset``, ``--split``, ``--shots`` change it.)

Not part of the served loop: the README's adaptation section reports what this measured.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from innerloop_training.sources import build_source

from innerloop.checkpoint import load_checkpoint

Features = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def prototypes(features: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    onehot = F.one_hot(labels, ways).to(features.dtype)
    return onehot.transpose(-1, -2) @ features / onehot.sum(-2)[..., None]


def logits(
    x: torch.Tensor, protos: torch.Tensor, cosine: bool, scale: float = 10.0
) -> torch.Tensor:
    if cosine:
        return scale * F.normalize(x, dim=-1) @ F.normalize(protos, dim=-1).transpose(-1, -2)
    return -(torch.cdist(x, protos) ** 2)


def leave_one_out_logits(
    support: torch.Tensor, labels: torch.Tensor, ways: int, cosine: bool, scale: float = 10.0
) -> torch.Tensor:
    """Each support item against every prototype, its own class's computed without it."""
    onehot = F.one_hot(labels, ways).to(support.dtype)
    counts = onehot.sum(-2)  # [tasks, ways]
    protos = onehot.transpose(-1, -2) @ support / counts[..., None]
    dim = support.shape[-1]
    own_sum = (counts[..., None] * protos).gather(1, labels[..., None].expand(-1, -1, dim))
    own = (own_sum - support) / (counts.gather(1, labels) - 1).clamp_min(1)[..., None]
    per_item = protos[:, None].expand(-1, support.shape[1], -1, -1).clone()
    per_item.scatter_(2, labels[..., None, None].expand(-1, -1, 1, dim), own[:, :, None])
    if cosine:
        return scale * (
            F.normalize(support, dim=-1)[:, :, None] * F.normalize(per_item, dim=-1)
        ).sum(-1)
    return -((support[:, :, None] - per_item) ** 2).sum(-1)


def aligned_accuracy(
    episode: Features, ways: int, steps: int, lr: float, cosine: bool, optimizer: str, loo: bool
) -> torch.Tensor:
    support, support_y, query, query_y = episode
    tasks, _, dim = support.shape
    transform = torch.eye(dim).expand(tasks, dim, dim).clone().requires_grad_(True)
    opt: torch.optim.Optimizer = (
        torch.optim.Adadelta([transform], lr=lr)
        if optimizer == "adadelta"
        else torch.optim.Adam([transform], lr=lr)
    )
    for _ in range(steps):
        mapped = support @ transform
        if loo:
            out = leave_one_out_logits(mapped, support_y, ways, cosine)
        else:
            out = logits(mapped, prototypes(mapped, support_y, ways), cosine)
        loss = F.cross_entropy(out.flatten(0, 1), support_y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        protos = prototypes(support @ transform, support_y, ways)
        predicted = logits(query @ transform, protos, cosine).argmax(-1)
        return (predicted == query_y).float().mean(-1)


def frozen_episodes(
    checkpoint: Path,
    dataset: str,
    split: str,
    ways: int,
    shots: int,
    queries: int,
    episodes: int,
    data_root: str | None,
) -> list[Features]:
    """Fixed episodes as the checkpoint's un-adapted features: (support, labels, query, labels),
    each ``[tasks, items, ...]``; the probes fit on these, never on the network."""
    learner, _ = load_checkpoint(checkpoint)
    source = build_source(
        dataset, split, ways=ways, shots=shots, queries=queries, seed=0, data_root=data_root
    )
    out: list[Features] = []
    with torch.no_grad():
        for batch in source.fixed(episodes, seed=1234):
            tasks, per_class = batch.support_y.shape
            support = learner.features(learner.params, batch.support_x.flatten(0, 1))
            query = learner.features(learner.params, batch.query_x.flatten(0, 1))
            out.append(
                (
                    support.reshape(tasks, per_class, -1),
                    batch.support_y,
                    query.reshape(tasks, batch.query_y.shape[1], -1),
                    batch.query_y,
                )
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--dataset", default="quickdraw")
    parser.add_argument("--split", default="val")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    episodes = frozen_episodes(
        args.checkpoint, args.dataset, args.split, args.ways, args.shots, args.queries,
        args.episodes, args.data_root,
    )  # fmt: skip
    base = torch.cat(
        [
            (logits(q, prototypes(s, sy, args.ways), False).argmax(-1) == qy).float().mean(-1)
            for s, sy, q, qy in episodes
        ]
    )
    print(
        f"{args.checkpoint.name} on {args.dataset} {args.split}, "
        f"{args.ways}-way {args.shots}-shot, {len(base)} episodes: "
        f"prototype answer {base.mean() * 100:.2f}"
    )
    variants = [
        ("euclidean", "adadelta", lr, loo) for lr in (1.0, 3.0) for loo in (False, True)
    ] + [("cosine", "adadelta", 1.0, False), ("cosine", "adam", 0.01, False)]
    print(f"{'logits':<10}{'optimiser':<10}{'lr':>6}{'loo':>5}{'accuracy':>10}{'gain':>16}")
    for kind, optimizer, lr, loo in variants:
        accuracy = torch.cat(
            [
                aligned_accuracy(e, args.ways, args.steps, lr, kind == "cosine", optimizer, loo)
                for e in episodes
            ]
        )
        gain = (accuracy - base) * 100
        ci = 1.96 * float(gain.std()) / math.sqrt(len(gain))
        print(
            f"{kind:<10}{optimizer:<10}{lr:>6g}{'yes' if loo else 'no':>5}"
            f"{accuracy.mean() * 100:>10.2f}{float(gain.mean()):>+10.2f} ± {ci:.2f}"
        )


if __name__ == "__main__":
    main()
