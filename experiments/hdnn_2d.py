"""Train a feed-forward H-DNN on a 2-D benchmark set, print its test accuracy, plot its decision boundary.

    python -m experiments.hdnn_2d --dataset double_moons --model H2
    python -m experiments.hdnn_2d --dataset swiss_roll --model H1 --j J2 --depth 64

The 2-D points are zero-padded to the state width, passed through the H-DNN and classified by a
linear head on the final state (Galimberti et al. 2023); the loss is cross-entropy plus the
smoothness regulariser. The last line printed is the test accuracy.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from hrnn.hdnn import J_MATRICES, HDNNClassifier, available_hdnns, build_hdnn
from tasks.toy2d import available_toy2d, load_toy2d

log = logging.getLogger(__name__)


@dataclass
class Config:
    dataset: str = "double_moons"
    model: str = "H2"
    j: str | None = None  # the variant's own J unless given
    width: int = 4
    depth: int = 32
    t_end: float = 4.0
    init_std: float = 1.0
    alpha: float = 1e-3  # smoothness regulariser weight
    epochs: int = 50
    batch_size: int = 100
    lr: float = 0.02
    n_train: int = 1000
    n_test: int = 1000
    seed: int = 0
    threads: int = 1  # torch threads: for a model this small, more threads only add synchronisation
    out: Path | None = None  # decision-boundary PNG; default outputs/hdnn_2d_<dataset>_<model>.png


def parse_args(argv: list[str] | None = None) -> Config:
    defaults = Config()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=available_toy2d(), default=defaults.dataset)
    parser.add_argument("--model", choices=available_hdnns(), default=defaults.model)
    parser.add_argument("--j", choices=sorted(J_MATRICES), default=defaults.j)
    for name in ("width", "depth", "epochs", "batch_size", "n_train", "n_test", "seed", "threads"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("t_end", "init_std", "alpha", "lr"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    parser.add_argument("--out", type=Path, default=defaults.out)
    return Config(**vars(parser.parse_args(argv)))


@torch.no_grad()
def accuracy(model: torch.nn.Module, data: TensorDataset) -> float:
    x, y = data.tensors
    return (model(x).argmax(1) == y).float().mean().item()


@torch.no_grad()
def plot_decision_boundary(model: torch.nn.Module, data: TensorDataset, title: str, path: Path) -> None:
    """Predicted class probability over a grid around ``data``, with its points on top."""
    x, y = data.tensors
    lo, hi = x.min(0).values - 0.2, x.max(0).values + 0.2
    gx, gy = torch.meshgrid(
        torch.linspace(lo[0], hi[0], 300), torch.linspace(lo[1], hi[1], 300), indexing="xy"
    )
    grid = torch.stack([gx.flatten(), gy.flatten()], 1)
    prob = model(grid).softmax(1)[:, 1].reshape(gx.shape)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.contourf(gx, gy, prob, levels=20, cmap="RdBu_r", alpha=0.6, vmin=0, vmax=1)
    ax.contour(gx, gy, prob, levels=[0.5], colors="k", linewidths=1)
    ax.scatter(x[:, 0], x[:, 1], c=y, cmap="RdBu_r", s=6, edgecolors="none")
    ax.set(title=title, aspect="equal", xticks=[], yticks=[])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> float:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("config: %s", asdict(config))
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)

    train, test = load_toy2d(config.dataset, config.n_train, config.n_test, seed=config.seed)
    loader = DataLoader(train, batch_size=config.batch_size, shuffle=True)

    hdnn = build_hdnn(
        config.model, config.width, config.depth, config.t_end, j=config.j, init_std=config.init_std
    )
    model = HDNNClassifier(2, 2, hdnn)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    # cosine decay to zero: the final epochs settle the boundary instead of jittering around it
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)

    bar = tqdm(range(config.epochs), desc=f"{config.model} on {config.dataset}")
    for _ in bar:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y) + hdnn.regularizer(config.alpha)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")

    train_acc, test_acc = accuracy(model, train), accuracy(model, test)
    out = config.out or Path("outputs") / f"hdnn_2d_{config.dataset}_{config.model}.png"
    title = f"{config.model} on {config.dataset}: test accuracy {test_acc:.1%}"
    plot_decision_boundary(model, test, title, out)
    log.info("train accuracy %.4f; decision boundary saved to %s", train_acc, out)
    print(f"test accuracy: {test_acc:.4f}")
    return test_acc


if __name__ == "__main__":
    main()
