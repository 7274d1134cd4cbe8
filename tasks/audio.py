"""Spoken-word classification from WAV folders: FSDD spoken digits and Speech Commands.

Both tasks share one pipeline (:func:`extract_features`):

1. read each WAV with ``soundfile`` (never ``torchaudio.load``), average channels to mono; a file
   that cannot be decoded, whose data chunk is shorter than its header declares, that is empty
   or holds NaN/Inf raises :class:`~tasks.idx.DataError` naming it;
2. resample (``torchaudio.functional.resample``) a file whose rate differs from the task's rate
   (8 kHz for FSDD, 16 kHz for Speech Commands), so every file gets the same features;
3. zero-pad or truncate the waveform to ``(max_frames - 1) * hop`` samples, so every file gives
   exactly ``max_frames`` frames (default 100, i.e. 1 s at a 10 ms hop; 99 % of the FSDD
   recordings are shorter) and files can be processed in batches;
4. features with ``torchaudio.transforms``: ``"mfcc"`` (``MFCC``, ``n_mfcc`` coefficients from
   ``n_mels`` mel bands in dB) or ``"logmel"`` (``MelSpectrogram``, then ``log(mel + 1e-6)``);
   25 ms windows (FFT size the next power of two) every 10 ms;
5. normalise every feature by the mean and standard deviation over the training set's frames.

Items: ``x`` float32 ``(max_frames, n_features)``, ``y`` int64 scalar class index.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import torch
import torchaudio
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm import tqdm

from .base import Task
from .idx import DataError
from .registry import check_int, default_data_dir

__all__ = [
    "AudioDataset",
    "AudioFile",
    "FeatureConfig",
    "build_fsdd",
    "build_speech_commands",
    "extract_features",
    "list_fsdd_files",
    "list_speech_commands_files",
    "read_wav",
    "split_fsdd_files",
]

FSDD_SAMPLE_RATE = 8_000
SPEECH_COMMANDS_SAMPLE_RATE = 16_000
_FSDD_NAME = re.compile(r"(?P<digit>\d)_(?P<speaker>[^_]+)_(?P<index>\d+)\.wav")
_FSDD_TEST_INDICES = range(5)  # upstream README: recordings numbered 0-4 are the test set
_BATCH = 256
_LOG_OFFSET = 1e-6
_MIN_STD = 1e-6  # a feature constant over the training set is centred, not blown up


class AudioFile(NamedTuple):
    """One recording: its path, class index, speaker, and split ("train", "val" or "test")."""

    path: Path
    label: int
    speaker: str
    split: str


class AudioDataset(Dataset):
    """Feature sequences ``x`` float32 ``(max_frames, n_features)`` and class indices ``y`` (int64 scalars).

    ``files[i]`` is the recording item ``i`` was computed from (for error analysis and split checks).
    """

    def __init__(self, features: Tensor, labels: Tensor, files: list[AudioFile]):
        self.features = features
        self.labels = labels
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.features[i], self.labels[i]


@dataclass(frozen=True)
class FeatureConfig:
    """Feature options: ``features`` in ``"mfcc" | "logmel"``; 25 ms windows every 10 ms."""

    sample_rate: int
    features: str = "mfcc"
    n_mfcc: int = 13
    n_mels: int = 40
    max_frames: int = 100

    @property
    def win_length(self) -> int:
        return round(0.025 * self.sample_rate)

    @property
    def hop_length(self) -> int:
        return round(0.010 * self.sample_rate)

    @property
    def n_fft(self) -> int:
        return 1 << (self.win_length - 1).bit_length()

    @property
    def n_samples(self) -> int:
        """Waveform length giving exactly ``max_frames`` centred frames."""
        return (self.max_frames - 1) * self.hop_length

    def mel_kwargs(self) -> dict[str, int]:
        return {
            "n_fft": self.n_fft,
            "win_length": self.win_length,
            "hop_length": self.hop_length,
            "n_mels": self.n_mels,
        }


class _LogMel(nn.Module):
    """``log(mel + 1e-6)`` of a power mel spectrogram: ``(..., n_mels, frames)``."""

    def __init__(self, config: FeatureConfig):
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=config.sample_rate, **config.mel_kwargs())

    def forward(self, waveform: Tensor) -> Tensor:
        return torch.log(self.mel(waveform) + _LOG_OFFSET)


def _mfcc(config: FeatureConfig) -> nn.Module:
    return torchaudio.transforms.MFCC(config.sample_rate, n_mfcc=config.n_mfcc, melkwargs=config.mel_kwargs())


FEATURES: dict[str, Callable[[FeatureConfig], nn.Module]] = {"mfcc": _mfcc, "logmel": _LogMel}
"""Feature name -> transform factory; a transform maps ``(..., samples)`` to ``(..., n_features, frames)``."""


def _validate_features(config: FeatureConfig) -> None:
    if config.features not in FEATURES:
        raise ValueError(f"unknown features {config.features!r}; known: {sorted(FEATURES)}")
    check_int("n_mels", config.n_mels, 1)
    check_int("n_mfcc", config.n_mfcc, 1)
    check_int("max_frames", config.max_frames, 2)
    if config.n_mfcc > config.n_mels:
        raise ValueError(f"n_mfcc ({config.n_mfcc}) cannot exceed n_mels ({config.n_mels})")


def _validate_audio(config: FeatureConfig, max_per_class: int | None, seed: int) -> None:
    _validate_features(config)
    check_int("seed", seed, 0)
    if max_per_class is not None:
        check_int("max_per_class", max_per_class, 1)


def _truncation(path: Path) -> str | None:
    """Why a RIFF/WAVE file is shorter than its header says, or ``None``.

    libsndfile silently reads what is there when the data chunk is cut short, so the chunk
    sizes are checked against the file size.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        if f.read(4) != b"RIFF":
            return None
        f.seek(12)
        while (header := f.read(8)) and len(header) == 8:
            chunk, length = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk == b"data":
                # 0 and 0xFFFFFFFF mark a size unknown to a streaming writer, not a truncation
                if length not in (0, 0xFFFFFFFF) and f.tell() + length > size:
                    return f"data chunk declares {length} bytes, only {size - f.tell()} present"
                return None
            f.seek(length + length % 2, 1)
    return None


def read_wav(path: str | Path, sample_rate: int) -> Tensor:
    """Mono float32 waveform ``(samples,)`` of one WAV file at ``sample_rate`` (resampled if needed)."""
    path = Path(path)
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as e:
        raise DataError(f"cannot read WAV file {path}: {e}") from e
    problem = _truncation(path)
    if problem:
        raise DataError(f"WAV file {path} is truncated: {problem}")
    if data.shape[0] == 0:
        raise DataError(f"WAV file {path} holds no samples")
    if not np.isfinite(data).all():
        raise DataError(f"WAV file {path} holds NaN or Inf samples")
    waveform = torch.from_numpy(data.mean(axis=1))
    if rate != sample_rate:
        waveform = torchaudio.functional.resample(waveform, rate, sample_rate)
    return waveform


def _fit_length(waveform: Tensor, n_samples: int) -> Tensor:
    return nn.functional.pad(waveform[:n_samples], (0, max(0, n_samples - len(waveform))))


def extract_features(paths: Sequence[Path], config: FeatureConfig) -> Tensor:
    """Features of WAV files, float32 ``(len(paths), max_frames, n_features)`` (steps 1-4 of the module doc)."""
    _validate_features(config)
    transform = FEATURES[config.features](config)
    chunks = []
    with tqdm(total=len(paths), desc=f"{config.features} features", unit="file", leave=False) as bar:
        for start in range(0, len(paths), _BATCH):
            batch = paths[start : start + _BATCH]
            waves = torch.stack(
                [_fit_length(read_wav(p, config.sample_rate), config.n_samples) for p in batch]
            )
            # (B, 1, samples): one channel per file keeps MFCC's top_db clamp per file, not per batch
            features = transform(waves.unsqueeze(1)).squeeze(1).transpose(1, 2)
            bad = ~torch.isfinite(features).all(dim=(1, 2))
            if bad.any():
                raise DataError(f"features of WAV file {batch[int(bad.nonzero()[0])]} hold NaN or Inf")
            chunks.append(features)
            bar.update(len(batch))
    return torch.cat(chunks)


def _subsample(files: list[AudioFile], max_per_class: int | None, seed: int) -> list[AudioFile]:
    """At most ``max_per_class`` files of each class in each split, drawn at random from ``seed``."""
    if max_per_class is None:
        return files
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    kept, counts = set(), {}
    for i in order:
        key = (files[i].split, files[i].label)
        if counts.get(key, 0) < max_per_class:
            counts[key] = counts.get(key, 0) + 1
            kept.add(i)
    return [f for i, f in enumerate(files) if i in kept]


def _audio_task(name: str, files: list[AudioFile], n_classes: int, config: FeatureConfig) -> Task:
    """Features of ``files``, normalised by training-set statistics, as a last-step classification task."""
    features = extract_features([f.path for f in files], config)
    labels = torch.tensor([f.label for f in files], dtype=torch.int64)
    splits = {
        s: torch.tensor([i for i, f in enumerate(files) if f.split == s], dtype=torch.int64)
        for s in ("train", "val", "test")
    }
    if not len(splits["train"]) or not len(splits["test"]):
        raise DataError(
            f"{name}: the split leaves {len(splits['train'])} training and {len(splits['test'])} test files"
        )
    train = features[splits["train"]].double()
    mean, std = train.mean(dim=(0, 1)), train.std(dim=(0, 1)).clamp_min(_MIN_STD)
    features = ((features - mean) / std).float()
    sets = {s: AudioDataset(features[idx], labels[idx], [files[i] for i in idx]) for s, idx in splits.items()}
    return Task(
        name=name,
        input_size=features.shape[-1],
        output_size=n_classes,
        seq_len=config.max_frames,
        objective="classification",
        readout="last",
        train=sets["train"],
        val=sets["val"] if len(splits["val"]) else None,
        test=sets["test"],
    )


# --- FSDD -------------------------------------------------------------------------------------


def list_fsdd_files(root: str | Path) -> list[tuple[Path, int, str, int]]:
    """``(path, digit, speaker, index)`` of every ``{digit}_{speaker}_{index}.wav`` in ``root``, sorted.

    A ``.wav`` file whose name does not follow the pattern raises ``DataError`` (a stray file
    means the folder is not what it is taken for); other files are ignored.
    """
    root = Path(root)
    layout = (
        "expected the FSDD recordings folder of {digit}_{speaker}_{index}.wav files (e.g. 7_jackson_32.wav)"
    )
    if not root.is_dir():
        raise DataError(f"FSDD folder not found: {root}; {layout}")
    files = []
    for path in sorted(root.glob("*.wav"), key=lambda p: p.name):
        match = _FSDD_NAME.fullmatch(path.name)
        if match is None:
            raise DataError(f"{path}: file name does not match {{digit}}_{{speaker}}_{{index}}.wav")
        files.append((path, int(match["digit"]), match["speaker"], int(match["index"])))
    if not files:
        raise DataError(f"no WAV files in {root}; {layout}")
    return files


def _fsdd_split_by_index(index: int, speaker: str, test_speakers: frozenset[str]) -> str:
    return "test" if index in _FSDD_TEST_INDICES else "train"


def _fsdd_split_by_speaker(index: int, speaker: str, test_speakers: frozenset[str]) -> str:
    return "test" if speaker in test_speakers else "train"


_FSDD_SPLITS = {"index": _fsdd_split_by_index, "speaker": _fsdd_split_by_speaker}


def _validate_fsdd_split(
    split: str, test_speakers: Sequence[str] | None, val_fraction: float, seed: int
) -> None:
    check_int("seed", seed, 0)
    if split not in _FSDD_SPLITS:
        raise ValueError(f"unknown FSDD split {split!r}; known: {sorted(_FSDD_SPLITS)}")
    if test_speakers is not None and split != "speaker":
        raise ValueError(f"test_speakers applies to split='speaker' only, got split={split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")


def _test_speakers(
    split: str, test_speakers: Sequence[str] | None, speakers: list[str], generator: torch.Generator
) -> frozenset[str]:
    """The held-out speakers of the speaker split (given, or one drawn from ``generator``)."""
    if split != "speaker":
        return frozenset()
    if test_speakers is None:
        return frozenset([speakers[int(torch.randint(len(speakers), (1,), generator=generator))]])
    if set(test_speakers) - set(speakers) or not 0 < len(set(test_speakers)) < len(speakers):
        raise ValueError(
            f"test_speakers must be a non-empty proper subset of {speakers}, got {list(test_speakers)}"
        )
    return frozenset(test_speakers)


def split_fsdd_files(
    root: str | Path | None = None,
    *,
    split: str = "index",
    test_speakers: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> list[AudioFile]:
    """Every FSDD recording in ``root`` with its split; see :func:`build_fsdd` for the options."""
    _validate_fsdd_split(split, test_speakers, val_fraction, seed)
    listed = list_fsdd_files(default_data_dir("fsdd", "recordings") if root is None else root)
    generator = torch.Generator().manual_seed(seed)
    held_out = _test_speakers(split, test_speakers, sorted({spk for _, _, spk, _ in listed}), generator)
    assign = _FSDD_SPLITS[split]
    files = [AudioFile(p, digit, spk, assign(index, spk, held_out)) for p, digit, spk, index in listed]
    train = [i for i, f in enumerate(files) if f.split == "train"]
    n_val = round(val_fraction * len(train))
    for i in torch.tensor(train)[torch.randperm(len(train), generator=generator)[:n_val]].tolist():
        files[i] = files[i]._replace(split="val")
    return files


def build_fsdd(
    *,
    root: str | Path | None = None,
    features: str = "mfcc",
    n_mfcc: int = 13,
    n_mels: int = 40,
    max_frames: int = 100,
    split: str = "index",
    test_speakers: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    max_per_class: int | None = None,
    seed: int = 0,
) -> Task:
    """Free Spoken Digit Dataset: 10 digits from 8 kHz WAV files, ``x`` ``(max_frames, n_features)``.

    ``root`` defaults to ``../shared/data/fsdd/recordings`` (or ``$HRNN_DATA/fsdd/recordings``).
    ``split="index"`` follows the dataset's convention: recordings numbered 0-4 of every
    speaker and digit are the test set (300 files; 2,430 train and 270 validation by default).
    ``split="speaker"`` holds out whole speakers, ``test_speakers`` (default: one drawn from
    ``seed``), so no speaker is in both the training and test sets. ``val_fraction`` of the
    training files, drawn from ``seed``, form the validation set (``None`` at 0).
    ``max_per_class`` keeps at most that many files per digit in each split (drawn from
    ``seed``) for quick runs.
    """
    config = FeatureConfig(FSDD_SAMPLE_RATE, features, n_mfcc, n_mels, max_frames)
    _validate_audio(config, max_per_class, seed)
    files = split_fsdd_files(
        root, split=split, test_speakers=test_speakers, val_fraction=val_fraction, seed=seed
    )
    return _audio_task("fsdd", _subsample(files, max_per_class, seed), 10, config)


# --- Speech Commands --------------------------------------------------------------------------


def _speech_commands_folder(root: Path) -> Path:
    """``root`` itself, or torchaudio's ``root/SpeechCommands/speech_commands_v0.0x`` inside it."""
    nested = sorted((root / "SpeechCommands").glob("speech_commands_v0.0*"))
    return nested[-1] if not (root / "testing_list.txt").is_file() and nested else root


def list_speech_commands_files(
    root: str | Path, labels: Sequence[str] | None = None
) -> tuple[list[AudioFile], list[str]]:
    """Files of a Speech Commands folder (``root/<label>/<file>.wav``) with their splits, and the labels.

    ``validation_list.txt`` and ``testing_list.txt`` in ``root`` list the validation and test
    files by relative path; every other file is training data. ``_background_noise_`` is not
    a label. ``labels`` (default: the folder names, sorted) fixes the classes and their order;
    files of other folders are left out. The speaker is the file-name part before ``_nohash_``.
    """
    root = Path(root)
    layout = "expected root/<label>/<file>.wav with validation_list.txt and testing_list.txt in root"
    if not root.is_dir():
        raise DataError(f"Speech Commands folder not found: {root}; {layout}")
    root = _speech_commands_folder(root)
    lists = {"val": root / "validation_list.txt", "test": root / "testing_list.txt"}
    missing = [str(p) for p in lists.values() if not p.is_file()]
    if missing:
        raise DataError(f"missing Speech Commands split list(s) {missing}; {layout}")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name != "_background_noise_")
    labels = found if labels is None else list(labels)
    absent = [label for label in labels if label not in found]
    if absent or not labels:
        raise DataError(f"label folder(s) {absent} not found in {root} (folders: {found}); {layout}")
    split_of = {}
    for split, list_path in lists.items():
        for entry in list_path.read_text().split():
            if entry.split("/")[0] in labels:
                if not (root / entry).is_file():
                    raise DataError(f"{list_path} lists {entry}, which is not in {root}")
                split_of[entry] = split
    files = [
        AudioFile(path, i, path.name.split("_nohash_")[0], split_of.get(f"{label}/{path.name}", "train"))
        for i, label in enumerate(labels)
        for path in sorted((root / label).glob("*.wav"))
    ]
    return files, labels


def build_speech_commands(
    *,
    root: str | Path | None = None,
    labels: Sequence[str] | None = None,
    features: str = "mfcc",
    n_mfcc: int = 13,
    n_mels: int = 40,
    max_frames: int = 100,
    max_per_class: int | None = None,
    seed: int = 0,
) -> Task:
    """Speech Commands keyword spotting from 16 kHz WAV files in torchaudio's ``SPEECHCOMMANDS`` layout.

    ``root`` (default ``../shared/data/speech_commands`` or ``$HRNN_DATA/speech_commands``) holds
    the label folders and the split lists, directly or under ``SpeechCommands/speech_commands_v0.0x``.
    Classes: ``labels`` or all label folders, sorted. ``max_per_class`` keeps at most that many
    files per label in each split, drawn from ``seed``.
    """
    config = FeatureConfig(SPEECH_COMMANDS_SAMPLE_RATE, features, n_mfcc, n_mels, max_frames)
    _validate_audio(config, max_per_class, seed)
    root = default_data_dir("speech_commands") if root is None else Path(root)
    files, labels = list_speech_commands_files(root, labels)
    if not files:
        raise DataError(f"no WAV files in the label folders {labels} of {root}")
    return _audio_task("speech_commands", _subsample(files, max_per_class, seed), len(labels), config)
