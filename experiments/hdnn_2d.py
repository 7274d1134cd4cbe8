"""Train a feed-forward H-DNN on a 2-D benchmark set, print its test accuracy, plot its decision boundary
and the propagation of the hidden states through the layers.

    python -m experiments.hdnn_2d --dataset double_moons --model H2
    python -m experiments.hdnn_2d --dataset swiss_roll --model H1 --j J2 --depth 64
    python -m experiments.hdnn_2d --preset paper --dataset swiss_roll_reference --model H1

The 2-D points are placed in the state (zero-padded, or at its first and last feature under the
reference convention), passed through the H-DNN and classified by a linear head on the final state
(Galimberti et al. 2023); the loss is cross-entropy plus the smoothness regulariser. ``--preset
paper`` uses the settings of the papers' 2-D experiments and their code (:data:`PRESETS`); options
given on the command line override a preset. The last line printed is the test accuracy.
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

from hrnn.hdnn import CONVENTIONS, J_MATRICES, HDNNClassifier, available_hdnns, build_hdnn
from tasks.toy2d import available_toy2d, load_toy2d

log = logging.getLogger(__name__)


@dataclass
class Config:
    dataset: str = "double_moons"
    model: str = "H2"
    j: str | None = None  # the variant's own J unless given
    convention: str = "hrnn"  # update order, H1's default J and input placement (hrnn.hdnn.CONVENTIONS)
    width: int = 4
    depth: int = 32
    t_end: float = 4.0
    init_std: float = 1.0
    bias_std: float = 0.0
    alpha: float = 1e-3  # smoothness regulariser weight
    epochs: int = 50
    batch_size: int = 100
    lr: float = 0.02
    schedule: str = "cosine"  # or "constant"
    n_train: int = 1000
    n_test: int = 1000
    seed: int = 0
    threads: int = 1  # torch threads: for a model this small, more threads only add synchronisation
    out: Path | None = None  # decision-boundary PNG; default outputs/hdnn_2d_<dataset>_<model>.png
    states_out: Path | None = None  # hidden-state propagation PNG; default beside the boundary plot


# The papers' 2-D settings as their code runs them: 4 features, 16 layers, t_end 1.2, regulariser
# alpha 5e-4, Adam lr 0.05 without decay, 50 epochs of batch 125, 8,000 points split in halves,
# weights and biases N(0, 1), the reference conventions.
PRESETS: dict[str, dict[str, object]] = {
    "hrnn": {},
    "paper": {
        "convention": "reference",
        "width": 4,
        "depth": 16,
        "t_end": 1.2,
        "bias_std": 1.0,
        "alpha": 5e-4,
        "epochs": 50,
        "batch_size": 125,
        "lr": 0.05,
        "schedule": "constant",
        "n_train": 4000,
        "n_test": 4000,
    },
}

SCHEDULES = {
    # cosine decay to zero: the final epochs settle the boundary instead of jittering around it
    "cosine": lambda optimizer, epochs: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs),
    "constant": lambda optimizer, epochs: torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0),
}


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="hrnn")
    parser.add_argument("--dataset", choices=available_toy2d())
    parser.add_argument("--model", choices=available_hdnns())
    parser.add_argument("--j", choices=sorted(J_MATRICES))
    parser.add_argument("--convention", choices=sorted(CONVENTIONS))
    parser.add_argument("--schedule", choices=sorted(SCHEDULES))
    for name in ("width", "depth", "epochs", "batch_size", "n_train", "n_test", "seed", "threads"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int)
    for name in ("t_end", "init_std", "bias_std", "alpha", "lr"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--states-out", type=Path)
    args = vars(parser.parse_args(argv))
    preset = PRESETS[args.pop("preset")]
    given = {name: value for name, value in args.items() if value is not None}
    return Config(**{**asdict(Config()), **preset, **given})


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


def decision_basis(head: torch.nn.Linear, final: torch.Tensor) -> torch.Tensor:
    """Two orthonormal directions (n, 2): the normal of the two-class decision hyperplane, then the
    final states' main direction of spread within that hyperplane (as the papers' propagation plots)."""
    normal = head.weight[1] - head.weight[0]
    e1 = normal / normal.norm()
    within = final - (final @ e1)[:, None] * e1
    e2 = torch.linalg.svd(within - within.mean(0), full_matrices=False).Vh[0]
    e2 = e2 - (e2 @ e1) * e1
    return torch.stack([e1, e2 / e2.norm()], 1)


@torch.no_grad()
def plot_state_propagation(
    model: HDNNClassifier, data: TensorDataset, title: str, path: Path, panels: int = 5
) -> None:
    """The hidden states y_0 .. y_N of ``data`` at ``panels`` layers, projected on :func:`decision_basis`."""
    x, y = data.tensors
    _, states = model.hdnn(model.initial_state(x), return_states=True)
    basis = decision_basis(model.head, states[-1])
    depth = len(states) - 1
    layers = sorted({round(i * depth / (panels - 1)) for i in range(panels)})
    fig, axes = plt.subplots(1, len(layers), figsize=(3 * len(layers), 3.2), squeeze=False)
    for ax, k in zip(axes[0], layers, strict=True):
        z = states[k] @ basis
        ax.scatter(z[:, 0], z[:, 1], c=y, cmap="RdBu_r", s=3, edgecolors="none")
        ax.set(title=f"layer {k}", xticks=[], yticks=[])
    w = model.head.weight[1] - model.head.weight[0]
    threshold = -(model.head.bias[1] - model.head.bias[0]) / w.norm()
    axes[0][-1].axvline(threshold.item(), color="k", lw=1)  # the classifier's hyperplane, seen edge-on
    fig.suptitle(title, y=1.04)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def train(config: Config, model: HDNNClassifier, train_set: TensorDataset) -> float:
    """Adam on cross-entropy plus the regulariser; returns the last batch's loss."""
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = SCHEDULES[config.schedule](optimizer, config.epochs)
    bar = tqdm(range(config.epochs), desc=f"{config.model} on {config.dataset}")
    for _ in bar:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y) + model.hdnn.regularizer(config.alpha)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
    return loss.item()


def main(argv: list[str] | None = None) -> float:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("config: %s", asdict(config))
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)

    train_set, test = load_toy2d(config.dataset, config.n_train, config.n_test, seed=config.seed)
    hdnn = build_hdnn(
        config.model,
        config.width,
        config.depth,
        config.t_end,
        j=config.j,
        convention=config.convention,
        init_std=config.init_std,
        bias_std=config.bias_std,
    )
    model = HDNNClassifier(2, 2, hdnn)
    train(config, model, train_set)

    train_acc, test_acc = accuracy(model, train_set), accuracy(model, test)
    out = config.out or Path("outputs") / f"hdnn_2d_{config.dataset}_{config.model}.png"
    title = f"{config.model} on {config.dataset}: test accuracy {test_acc:.1%}"
    plot_decision_boundary(model, test, title, out)
    states_out = config.states_out or out.with_name(f"{out.stem}_states.png")
    plot_state_propagation(model, test, f"{config.model} on {config.dataset}: hidden states", states_out)
    log.info("train accuracy %.4f; plots saved to %s and %s", train_acc, out, states_out)
    print(f"test accuracy: {test_acc:.4f}")
    return test_acc


if __name__ == "__main__":
    main()
