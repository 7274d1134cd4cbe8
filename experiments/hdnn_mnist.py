"""Train a convolution + H-DNN classifier on real MNIST digits and print its test accuracy.

    python -m experiments.hdnn_mnist                      # H2, data from ../shared/data/mnist
    python -m experiments.hdnn_mnist --model H1 --data /path/with/idx/files
    python -m experiments.hdnn_mnist --preset paper --model H1   # the papers' architecture
    python -m experiments.hdnn_mnist --preset paper --model MLP  # ... with an MLP in place of the H-DNN

Only the MNIST *test* set (10,000 images) is available offline, so it is split with a fixed seed
into 8,000 training and 2,000 test images (``--n-train``, ``--n-test``, ``--seed``); any folder
holding the IDX files (gzipped or not, or torchvision's ``MNIST/raw`` layout) works.

Architectures (``--architecture``, :data:`ARCHITECTURES`):

- ``hrnn``: two convolution + max-pool stages, a linear map to the H-DNN's width, the H-DNN block
  and a linear head;
- ``paper`` (Galimberti et al. 2023 and their code): one 3x3 convolution 1 -> ``channels``, the
  H-DNN applied pixel-wise across the channels (state width = ``channels``), one fully connected
  layer on all ``channels`` x 28 x 28 values.

``--model MLP`` replaces the H-DNN by a network of the same width and depth with layers
:math:`y_{j+1} = \tanh(K_j y_j + b_j)` (the authors' fully connected baseline). The loss is
cross-entropy plus the smoothness regulariser. The last line printed is the test accuracy.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from hrnn.hdnn import CONVENTIONS, J_MATRICES, available_hdnns, build_hdnn, smoothness_regularizer
from tasks.idx import load_mnist_arrays
from tasks.registry import default_data_dir

log = logging.getLogger(__name__)

MLP = "MLP"


@dataclass
class Config:
    data: Path = field(default_factory=lambda: default_data_dir("mnist"))
    architecture: str = "hrnn"
    model: str = "H2"  # an H-DNN variant or "MLP"
    j: str | None = None
    convention: str = "hrnn"
    channels: int = 8  # of the first convolution; the hrnn architecture's second has twice as many
    width: int = 32  # H-DNN state width of the hrnn architecture (the paper's is `channels`)
    depth: int = 8
    t_end: float = 1.0
    init_std: float = 1.0  # of the H-DNN's raw weights
    bias_std: float = 0.0
    alpha: float = 1e-3  # smoothness regulariser weight
    weight_decay: float = 0.0
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    schedule: str = "cosine"  # or "step": x 0.8 after every epoch
    n_train: int = 8000
    n_test: int = 2000
    seed: int = 0
    threads: int = 1  # torch threads; one avoids oversubscribing a shared CPU


# The authors' MNIST script with its H1 (J1) settings: 4 layers of step 0.5, alpha 8e-3, weight
# decay 4e-3, Adam lr 0.04 decayed by 0.8 every epoch, batch 100 (their MS1: --t-end 1.6 --alpha 1e-3
# --weight-decay 1e-3; their H1 with J2: --t-end 0.2 --alpha 1e-3 --weight-decay 2e-4).
PRESETS: dict[str, dict[str, object]] = {
    "hrnn": {},
    "paper": {
        "architecture": "paper",
        "model": "H1",
        "convention": "reference",
        "channels": 8,
        "depth": 4,
        "t_end": 2.0,
        "bias_std": 1.0,
        "alpha": 8e-3,
        "weight_decay": 4e-3,
        "epochs": 5,
        "batch_size": 100,
        "lr": 0.04,
        "schedule": "step",
    },
}

SCHEDULES = {
    "cosine": lambda optimizer, steps, per_epoch: torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, steps
    ),
    "step": lambda optimizer, steps, per_epoch: torch.optim.lr_scheduler.StepLR(
        optimizer, per_epoch, gamma=0.8
    ),
}


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="hrnn")
    parser.add_argument("--data", type=Path, help="folder with the MNIST IDX files")
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES))
    parser.add_argument("--model", choices=[*available_hdnns(), MLP])
    parser.add_argument("--j", choices=sorted(J_MATRICES))
    parser.add_argument("--convention", choices=sorted(CONVENTIONS))
    parser.add_argument("--schedule", choices=sorted(SCHEDULES))
    for name in (
        "channels",
        "width",
        "depth",
        "epochs",
        "batch_size",
        "n_train",
        "n_test",
        "seed",
        "threads",
    ):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int)
    for name in ("t_end", "init_std", "bias_std", "alpha", "weight_decay", "lr"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float)
    args = vars(parser.parse_args(argv))
    preset = PRESETS[args.pop("preset")]
    given = {name: value for name, value in args.items() if value is not None}
    return Config(**{**asdict(Config()), **preset, **given})


def mnist_split(folder: Path, n_train: int, n_test: int, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """Disjoint train/test sets ``(x (1, 28, 28) float32, y int64)`` from a seeded permutation of the
    10,000 test-set images, standardised with the training images' mean and standard deviation."""
    images, labels = load_mnist_arrays(folder, "test")
    if n_train + n_test > len(images):
        raise ValueError(
            f"n_train + n_test = {n_train + n_test} exceeds the {len(images)} images in {folder}"
        )
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    y = torch.from_numpy(labels)
    train, test = order[:n_train], order[n_train : n_train + n_test]
    mean, std = x[train].mean(), x[train].std()
    return TensorDataset((x[train] - mean) / std, y[train]), TensorDataset((x[test] - mean) / std, y[test])


class TanhMLP(nn.Module):
    r"""``depth`` layers :math:`y_{j+1} = \tanh(K_j y_j + b_j)` of width ``n``: (*, n) -> (*, n).

    The H-DNN's stand-in for the baseline, with the same stacked ``weight`` (depth, n, n) and ``bias``
    (depth, n) and the same regulariser (with :math:`h = t_{end} / depth`).
    """

    def __init__(self, n: int, depth: int, t_end: float = 1.0, init_std: float = 1.0, bias_std: float = 0.0):
        super().__init__()
        # N(0, 1/n): the H-DNN's N(0, 1) would saturate tanh from the first layer
        self.weight = nn.Parameter(torch.randn(depth, n, n) * init_std / n**0.5)
        self.bias = nn.Parameter(torch.randn(depth, n) * bias_std)
        self.h = t_end / depth

    def forward(self, y: Tensor) -> Tensor:
        for K, b in zip(self.weight.unbind(0), self.bias.unbind(0), strict=True):
            y = torch.tanh(F.linear(y, K, b))
        return y

    def regularizer(self, alpha: float) -> Tensor:
        return smoothness_regularizer(self.weight, self.bias, self.h, alpha)


def build_block(config: Config, width: int) -> nn.Module:
    """The (*, width) -> (*, width) block: the H-DNN variant ``config.model`` or the MLP."""
    if config.model == MLP:
        return TanhMLP(width, config.depth, config.t_end, config.init_std, config.bias_std)
    return build_hdnn(
        config.model,
        width,
        config.depth,
        config.t_end,
        j=config.j,
        convention=config.convention,
        init_std=config.init_std,
        bias_std=config.bias_std,
    )


class ConvHDNN(nn.Module):
    """Convolutional features -> block -> linear head. Input (batch, 1, 28, 28), output logits (batch, 10)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        c = config.channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * c * 7 * 7, config.width),
        )
        self.hdnn = build_block(config, config.width)
        self.head = nn.Linear(config.width, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.hdnn(self.features(x)))


class PixelwiseHDNN(nn.Module):
    """The papers' MNIST network: 3x3 convolution 1 -> c, the block on every pixel's c channels, one
    fully connected layer. Input (batch, 1, 28, 28), output logits (batch, 10)."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        c = config.channels
        self.conv = nn.Conv2d(1, c, 3, padding=1)
        self.hdnn = build_block(config, c)
        self.head = nn.Linear(c * 28 * 28, 10)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x).permute(0, 2, 3, 1)  # (batch, 28, 28, c): the channels are each pixel's state
        return self.head(self.hdnn(y).permute(0, 3, 1, 2).flatten(1))


ARCHITECTURES: dict[str, type[nn.Module]] = {"hrnn": ConvHDNN, "paper": PixelwiseHDNN}


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorDataset, batch_size: int = 500) -> float:
    model.eval()
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in DataLoader(data, batch_size=batch_size))
    model.train()
    return correct / len(data)


def main(argv: list[str] | None = None) -> float:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info("config: %s", asdict(config))
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)

    train, test = mnist_split(config.data, config.n_train, config.n_test, config.seed)
    log.info(
        "MNIST test set from %s split %d train / %d test (seed %d)",
        config.data,
        len(train),
        len(test),
        config.seed,
    )
    loader = DataLoader(train, batch_size=config.batch_size, shuffle=True)

    model = ARCHITECTURES[config.architecture](config)
    log.info(
        "%s architecture, %d parameters", config.architecture, sum(p.numel() for p in model.parameters())
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = SCHEDULES[config.schedule](optimizer, config.epochs * len(loader), len(loader))

    for epoch in range(config.epochs):
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}")
        for x, y in bar:
            loss = F.cross_entropy(model(x), y) + model.hdnn.regularizer(config.alpha)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        log.info("epoch %d: test accuracy %.4f", epoch + 1, accuracy(model, test))

    test_acc = accuracy(model, test)
    log.info("train accuracy %.4f", accuracy(model, train))
    print(f"test accuracy: {test_acc:.4f}")
    return test_acc


if __name__ == "__main__":
    main()
