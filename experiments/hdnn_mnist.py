"""Train a small convolution + H-DNN classifier on real MNIST digits and print its test accuracy.

    python -m experiments.hdnn_mnist                      # H2, data from ../shared/data/mnist
    python -m experiments.hdnn_mnist --model H1 --data /path/with/idx/files

Only the MNIST *test* set (10,000 images) is available offline, so it is split with a fixed seed
into 8,000 training and 2,000 test images (``--n-train``, ``--n-test``, ``--seed``); any folder
holding the IDX files (gzipped or not, or torchvision's ``MNIST/raw`` layout) works. The model:
two convolution + max-pool stages, a linear map to the H-DNN's width, the H-DNN block
(Galimberti et al. 2023) and a linear head; the loss is cross-entropy plus the smoothness
regulariser. The last line printed is the test accuracy.
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

from hrnn.hdnn import HDNNClassifier, available_hdnns, build_hdnn
from tasks.idx import load_mnist_arrays
from tasks.registry import default_data_dir

log = logging.getLogger(__name__)


@dataclass
class Config:
    data: Path = field(default_factory=lambda: default_data_dir("mnist"))
    model: str = "H2"
    channels: int = 8  # of the first convolution; the second has twice as many
    width: int = 32  # H-DNN state width
    depth: int = 8
    t_end: float = 1.0
    init_std: float = 1.0  # of the H-DNN's raw weights
    alpha: float = 1e-3  # smoothness regulariser weight
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    n_train: int = 8000
    n_test: int = 2000
    seed: int = 0
    threads: int = 1  # torch threads; one avoids oversubscribing a shared CPU


def parse_args(argv: list[str] | None = None) -> Config:
    defaults = Config()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=defaults.data, help="folder with the MNIST IDX files")
    parser.add_argument("--model", choices=available_hdnns(), default=defaults.model)
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
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("t_end", "init_std", "alpha", "lr"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    return Config(**vars(parser.parse_args(argv)))


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


class ConvHDNN(nn.Module):
    """Convolutional features -> H-DNN block -> linear head. Input (batch, 1, 28, 28), output logits (batch, 10)."""

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
        self.hdnn = build_hdnn(
            config.model, config.width, config.depth, config.t_end, init_std=config.init_std
        )
        self.classifier = HDNNClassifier(config.width, 10, self.hdnn)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


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

    model = ConvHDNN(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * len(loader))

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
