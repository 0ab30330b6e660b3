"""Transductive head adaptation (TIM) beats the prototype answer only on balanced query sets.

Transductive Information Maximization (Boudiaf et al., NeurIPS 2020, "TIM-GD"): on the
checkpoint's frozen, L2-normalised features, a classifier initialised at the class prototypes is
fitted per episode with Adam on ``w_ce * CE(support) - (w_marginal * H(mean query prediction)
- w_conditional * mean H(query prediction))``: besides the labelled support it uses the
*unlabelled queries of the same request*, pushing each query towards a confident answer while
keeping the batch's predicted classes balanced. The paper's defaults are temperature 15 and
weights (0.1, 1, 0.1); its learning rate (1e-4) barely moves our 64-d Conv4 features, so the
grid also has larger ones.

It is measured here on fixed validation episodes against the prototype answer on the same
queries, with the query set as the benchmark protocol draws it (15 per class, balanced) and as
users send it: a single query, queries of only two of the classes, and class proportions drawn
from a flat Dirichlet (Veilleux et al., NeurIPS 2021, "Realistic evaluation of transductive
few-shot learning").

    python benchmarks/probe_transductive.py checkpoints/quickdraw.safetensors
    python benchmarks/probe_transductive.py checkpoints/omniglot.safetensors   # shifted
    python benchmarks/probe_transductive.py checkpoints/quickdraw.safetensors --dataset omniglot

Not part of the served loop: the README's adaptation section says why.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from probe_feature_alignment import Features as Episode
from probe_feature_alignment import frozen_episodes, prototypes

QUERY_SETS = ("balanced", "one query", "two classes", "dirichlet")


def fit_transductive(
    episode: Episode, ways: int, steps: int, lr: float, weights: tuple[float, float, float]
) -> torch.Tensor:
    """Per-query correctness after fitting the classifier on support and (unlabelled) queries."""
    support, support_y, query, query_y = episode
    support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    centres = prototypes(support, support_y, ways).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([centres], lr=lr)
    onehot = F.one_hot(support_y, ways).float()
    w_ce, w_marginal, w_conditional = weights

    def logits(x: torch.Tensor) -> torch.Tensor:
        return -7.5 * torch.cdist(x, centres) ** 2  # temperature 15, times 1/2 as in TIM

    for _ in range(steps):
        cross_entropy = -(onehot * logits(support).log_softmax(-1)).sum(-1).mean(-1).sum()
        p = logits(query).softmax(-1)
        conditional = -(p * torch.log(p + 1e-12)).sum(-1).mean(-1).sum()
        marginal_p = p.mean(1)
        marginal = -(marginal_p * torch.log(marginal_p + 1e-12)).sum(-1).sum()
        loss = w_ce * cross_entropy - (w_marginal * marginal - w_conditional * conditional)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return (logits(query).argmax(-1) == query_y).float().flatten()


def prototype_answer(episode: Episode, ways: int) -> torch.Tensor:
    support, support_y, query, query_y = episode
    nearest = torch.cdist(query, prototypes(support, support_y, ways)).argmin(-1)
    return (nearest == query_y).float().flatten()


def query_sets(episodes: list[Episode], kind: str, ways: int, seed: int) -> list[Episode]:
    """Each task of each episode as its own one-task episode, with the queries ``kind`` keeps."""
    rng = np.random.default_rng(seed)
    out: list[Episode] = []
    for support, support_y, query, query_y in episodes:
        for t in range(query.shape[0]):
            labels = query_y[t].numpy()
            if kind == "balanced":
                keep = np.arange(len(labels))
            elif kind == "one query":
                keep = rng.integers(len(labels), size=1)
            elif kind == "two classes":
                keep = np.flatnonzero(np.isin(labels, rng.choice(ways, 2, replace=False)))
            else:  # dirichlet: class proportions from Dir(1, ..., 1), at least one query
                counts = np.round(rng.dirichlet(np.ones(ways)) * len(labels)).astype(int)
                keep = np.concatenate(
                    [np.flatnonzero(labels == c)[: counts[c]] for c in range(ways)]
                ).astype(int)
                keep = keep if keep.size else np.arange(1)
            index = torch.as_tensor(keep, dtype=torch.long)
            out.append(
                (support[t : t + 1], support_y[t : t + 1], query[t : t + 1, index],
                 query_y[t : t + 1, index])
            )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--dataset", default="quickdraw")
    parser.add_argument("--split", default="val")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    episodes = frozen_episodes(
        args.checkpoint, args.dataset, args.split, args.ways, args.shots, 15, args.episodes,
        args.data_root,
    )  # fmt: skip
    print(
        f"{args.checkpoint.name} on {args.dataset} {args.split}, {args.ways}-way "
        f"{args.shots}-shot, {args.episodes} fixed episodes; accuracy over the kept queries"
    )
    settings = [
        (100, 0.01, (0.1, 1.0, 0.1)),  # TIM's weights, a larger step than its 1e-4
        (150, 1e-4, (0.1, 1.0, 0.1)),  # TIM's defaults
        (100, 0.01, (1.0, 0.0, 0.1)),  # no balance term: support CE + query entropy
    ]
    print(f"{'query set':<12}{'queries':>8}{'prototype':>10}  steps, lr, weights -> accuracy, gain")
    for kind in QUERY_SETS:
        tasks = query_sets(episodes, kind, args.ways, seed=7)
        base_per_task = [prototype_answer(e, args.ways) for e in tasks]
        base = torch.cat(base_per_task)
        cells = []
        for steps, lr, weights in settings:
            per_task = [fit_transductive(e, args.ways, steps, lr, weights) for e in tasks]
            gains = torch.stack(
                [(c - b).mean() for c, b in zip(per_task, base_per_task, strict=True)]
            )
            ci = 1.96 * float(gains.std()) / math.sqrt(len(gains))
            cells.append(
                f"{steps}, {lr:g}, {weights} -> {100 * float(torch.cat(per_task).mean()):.2f} "
                f"({100 * float(gains.mean()):+.2f} ± {100 * ci:.2f})"
            )
        print(f"{kind:<12}{len(base):>8}{100 * float(base.mean()):>10.2f}  " + "; ".join(cells))
    print("gain: per task, the kept queries' accuracy minus the prototype answer's (95% interval)")


if __name__ == "__main__":
    main()
