"""Spoken digits on the real FSDD recordings; Speech Commands and the data errors on tiny synthetic folders."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

import tasks
from tasks.audio import FeatureConfig, extract_features, list_fsdd_files, read_wav, split_fsdd_files

SUBSET = 20  # files per digit in each split: 200 train / 200 val / 200 test, built in about a second


@pytest.fixture(scope="module")
def fsdd(fsdd_dir):
    return tasks.build_task("fsdd", root=fsdd_dir, max_per_class=SUBSET)


@pytest.fixture(scope="module")
def fsdd_by_speaker(fsdd_dir):
    return tasks.build_task("fsdd", root=fsdd_dir, split="speaker", max_per_class=SUBSET)


def _tone(freq: float, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def _fake_fsdd(folder, digits=(0, 1), speakers=("ann", "bob"), indices=range(8), rate=8000):
    folder.mkdir(parents=True, exist_ok=True)
    for d in digits:
        for s in speakers:
            for i in indices:
                sf.write(folder / f"{d}_{s}_{i}.wav", _tone(300 + 200 * d + 7 * i, 0.3, rate), rate)
    return folder


def _fake_speech_commands(root, rate=16000):
    entries = {}
    for label, freq in (("yes", 500.0), ("no", 900.0), ("_background_noise_", 50.0)):
        (root / label).mkdir(parents=True)
        for k in range(6):
            name = f"spk{k % 3}_nohash_{k}.wav"
            sf.write(root / label / name, _tone(freq + 10 * k, 1.0, rate), rate)
            entries[(label, k)] = f"{label}/{name}"
    (root / "validation_list.txt").write_text("\n".join(entries[(lab, 0)] for lab in ("no", "yes")) + "\n")
    (root / "testing_list.txt").write_text(
        "\n".join(entries[(lab, k)] for lab in ("no", "yes") for k in (1, 2)) + "\n"
    )
    return root


def _speakers(dataset) -> set[str]:
    return {f.speaker for f in dataset.files}


def _index(file) -> int:
    return int(file.path.stem.split("_")[2])


# --- FSDD on the real recordings --------------------------------------------------------------


def test_all_3000_recordings_are_listed(fsdd_dir):
    files = list_fsdd_files(fsdd_dir)
    assert len(files) == 3000
    assert sorted({digit for _, digit, _, _ in files}) == list(range(10))
    assert len({speaker for _, _, speaker, _ in files}) == 6
    assert sorted({index for _, _, _, index in files}) == list(range(50))


def test_fsdd_record_shapes_and_labels(fsdd):
    assert (fsdd.name, fsdd.input_size, fsdd.output_size, fsdd.seq_len) == ("fsdd", 13, 10, 100)
    assert (fsdd.objective, fsdd.readout) == ("classification", "last")
    assert (len(fsdd.train), len(fsdd.val), len(fsdd.test)) == (10 * SUBSET,) * 3
    for dataset in (fsdd.train, fsdd.val, fsdd.test):
        x, y = dataset[0]
        assert (x.shape, x.dtype, y.shape, y.dtype) == ((100, 13), torch.float32, (), torch.int64)
        assert torch.equal(torch.bincount(dataset.labels, minlength=10), torch.full((10,), SUBSET))
        assert all(f.label == int(y) for f, y in zip(dataset.files, dataset.labels, strict=True))


def test_fsdd_default_split_follows_the_upstream_convention(fsdd):
    assert all(_index(f) < 5 for f in fsdd.test.files)
    assert all(_index(f) >= 5 for f in fsdd.train.files + fsdd.val.files)
    assert not {f.path for f in fsdd.train.files} & {f.path for f in fsdd.val.files}


def _by_split(files) -> dict[str, list]:
    return {s: [f for f in files if f.split == s] for s in ("train", "val", "test")}


def test_fsdd_full_index_split_sizes(fsdd_dir):
    # 300 test files (indices 0-4 of each speaker and digit), 10 % of the other 2,700 for validation
    splits = _by_split(split_fsdd_files(fsdd_dir))
    assert {s: len(f) for s, f in splits.items()} == {"train": 2430, "val": 270, "test": 300}
    assert sorted({_index(f) for f in splits["test"]}) == list(range(5))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fsdd_full_speaker_split_has_no_speaker_leakage(fsdd_dir, seed):
    splits = _by_split(split_fsdd_files(fsdd_dir, split="speaker", seed=seed))
    test_speakers = {f.speaker for f in splits["test"]}
    assert len(test_speakers) == 1 and len(splits["test"]) == 500
    assert not test_speakers & {f.speaker for f in splits["train"] + splits["val"]}


def test_fsdd_speaker_split_has_no_speaker_leakage(fsdd_by_speaker):
    test_speakers = _speakers(fsdd_by_speaker.test)
    assert len(test_speakers) == 1
    assert not test_speakers & (_speakers(fsdd_by_speaker.train) | _speakers(fsdd_by_speaker.val))
    assert len(_speakers(fsdd_by_speaker.train)) == 5


def test_fsdd_speaker_split_honours_given_speakers(fsdd_dir):
    task = tasks.build_task(
        "fsdd", root=fsdd_dir, split="speaker", test_speakers=["theo", "lucas"], max_per_class=3, max_frames=5
    )
    assert _speakers(task.test) == {"theo", "lucas"}
    assert not _speakers(task.train) & {"theo", "lucas"}


def test_fsdd_features_are_normalised_by_training_statistics(fsdd):
    train = fsdd.train.features.double()
    torch.testing.assert_close(
        train.mean(dim=(0, 1)), torch.zeros(13, dtype=torch.float64), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(train.std(dim=(0, 1)), torch.ones(13, dtype=torch.float64), rtol=0, atol=1e-5)
    assert torch.isfinite(fsdd.test.features).all()


def test_fsdd_is_deterministic_by_seed(fsdd_dir):
    a, b, c = (tasks.build_task("fsdd", root=fsdd_dir, max_per_class=4, seed=seed) for seed in (0, 0, 1))
    assert torch.equal(a.test.features, b.test.features) and torch.equal(a.train.features, b.train.features)
    assert [f.path for f in a.val.files] == [f.path for f in b.val.files]
    assert [f.path for f in a.test.files] != [f.path for f in c.test.files]


@pytest.mark.parametrize(
    ("options", "shape"),
    [
        ({"max_frames": 40}, (40, 13)),
        ({"n_mfcc": 20}, (100, 20)),
        ({"features": "logmel"}, (100, 40)),
        ({"features": "logmel", "n_mels": 32, "max_frames": 60}, (60, 32)),
    ],
)
def test_fsdd_feature_shape_is_fixed_by_the_options(fsdd_dir, options, shape):
    task = tasks.build_task("fsdd", root=fsdd_dir, max_per_class=2, **options)
    assert task.input_size == shape[1] and task.seq_len == shape[0]
    assert {tuple(task.train[i][0].shape) for i in range(len(task.train))} == {shape}


def test_batched_features_equal_torchaudio_on_each_padded_file(fsdd_dir):
    paths = [p for p, _, _, _ in list_fsdd_files(fsdd_dir)[::500]]
    config = FeatureConfig(sample_rate=8000)
    features = extract_features(paths, config)
    mfcc = torchaudio.transforms.MFCC(
        8000, n_mfcc=13, melkwargs={"n_fft": 256, "win_length": 200, "hop_length": 80, "n_mels": 40}
    )
    for path, batched in zip(paths, features, strict=True):
        data, rate = sf.read(path, dtype="float32")
        assert rate == 8000
        wave = np.zeros(99 * 80, dtype=np.float32)
        wave[: min(len(data), len(wave))] = data[: len(wave)]
        torch.testing.assert_close(batched, mfcc(torch.from_numpy(wave)).T, rtol=1e-5, atol=1e-4)


def test_logmel_features_are_log_of_torchaudio_mel_power(fsdd_dir):
    path = list_fsdd_files(fsdd_dir)[7][0]
    features = extract_features([path], FeatureConfig(sample_rate=8000, features="logmel", max_frames=30))[0]
    wave = torch.from_numpy(sf.read(path, dtype="float32")[0][: 29 * 80])
    mel = torchaudio.transforms.MelSpectrogram(8000, n_fft=256, win_length=200, hop_length=80, n_mels=40)
    torch.testing.assert_close(features, torch.log(mel(wave) + 1e-6).T, rtol=1e-5, atol=1e-4)


# --- resampling and data errors on synthetic folders ------------------------------------------


def test_files_at_another_rate_are_resampled(tmp_path):
    sf.write(tmp_path / "tone.wav", _tone(440, 0.5, 16000), 16000)
    resampled = read_wav(tmp_path / "tone.wav", 8000)
    assert resampled.shape == (4000,)
    # the 16 kHz tone read at 8 kHz is the tone sampled at 8 kHz (away from the clip edges)
    expected = torch.from_numpy(_tone(440, 0.5, 8000))
    torch.testing.assert_close(resampled[50:-50], expected[50:-50], rtol=0, atol=5e-3)


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = _tone(300, 0.2, 8000), _tone(700, 0.2, 8000)
    sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 8000)
    torch.testing.assert_close(
        read_wav(tmp_path / "s.wav", 8000), torch.from_numpy((left + right) / 2), atol=1e-4, rtol=0
    )


def test_fsdd_builds_from_any_folder_of_the_layout(tmp_path):
    task = tasks.build_task(
        "fsdd", root=_fake_fsdd(tmp_path), split="speaker", test_speakers=["bob"], val_fraction=0.25
    )
    assert (len(task.train), len(task.val), len(task.test)) == (12, 4, 16)
    assert _speakers(task.test) == {"bob"}


def test_missing_fsdd_folder_names_path_and_layout(tmp_path):
    with pytest.raises(
        tasks.DataError, match=rf"FSDD folder not found: {tmp_path / 'x'}.*\{{digit\}}_\{{speaker\}}_"
    ):
        tasks.build_task("fsdd", root=tmp_path / "x")


def test_empty_fsdd_folder_is_rejected(tmp_path):
    with pytest.raises(tasks.DataError, match=rf"no WAV files in {tmp_path}"):
        tasks.build_task("fsdd", root=tmp_path)


def test_badly_named_file_is_named(tmp_path):
    folder = _fake_fsdd(tmp_path)
    sf.write(folder / "zero_ann_1.wav", _tone(300, 0.1, 8000), 8000)
    with pytest.raises(tasks.DataError, match=r"zero_ann_1\.wav: file name does not match"):
        tasks.build_task("fsdd", root=folder)


def test_corrupt_wav_is_named(tmp_path):
    folder = _fake_fsdd(tmp_path)
    (folder / "1_bob_3.wav").write_bytes(b"not a wav file" * 50)
    with pytest.raises(tasks.DataError, match=r"cannot read WAV file .*1_bob_3\.wav"):
        tasks.build_task("fsdd", root=folder)


def test_truncated_wav_is_named(tmp_path):
    folder = _fake_fsdd(tmp_path)
    data = (folder / "0_ann_2.wav").read_bytes()
    (folder / "0_ann_2.wav").write_bytes(data[: len(data) // 2])
    with pytest.raises(tasks.DataError, match=r"0_ann_2\.wav is truncated: data chunk declares 4800 bytes"):
        tasks.build_task("fsdd", root=folder)


def test_nan_samples_are_rejected(tmp_path):
    folder = _fake_fsdd(tmp_path)
    wave = _tone(300, 0.3, 8000)
    wave[100] = np.nan
    sf.write(folder / "1_ann_4.wav", wave, 8000, subtype="FLOAT")
    with pytest.raises(tasks.DataError, match=r"1_ann_4\.wav holds NaN or Inf samples"):
        tasks.build_task("fsdd", root=folder)


def test_non_finite_features_are_rejected(tmp_path):
    folder = _fake_fsdd(tmp_path)
    # finite samples whose power overflows float32
    sf.write(folder / "0_bob_5.wav", _tone(300, 0.3, 8000) * 1e30, 8000, subtype="FLOAT")
    with pytest.raises(tasks.DataError, match=r"features of WAV file .*0_bob_5\.wav hold NaN or Inf"):
        tasks.build_task("fsdd", root=folder)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"features": "spectrogram"}, r"unknown features 'spectrogram'; known: \['logmel', 'mfcc'\]"),
        ({"n_mfcc": 50}, r"n_mfcc \(50\) cannot exceed n_mels \(40\)"),
        ({"split": "random"}, r"unknown FSDD split 'random'; known: \['index', 'speaker'\]"),
        ({"test_speakers": ["ann"]}, "test_speakers applies to split='speaker' only"),
        ({"split": "speaker", "test_speakers": ["eve"]}, r"proper subset of \['ann', 'bob'\]"),
        ({"split": "speaker", "test_speakers": ["ann", "bob"]}, "proper subset"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"max_frames": 1}, "max_frames must be >= 2"),
    ],
)
def test_invalid_fsdd_options_are_rejected(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        tasks.build_task("fsdd", root=_fake_fsdd(tmp_path), **options)


# --- Speech Commands --------------------------------------------------------------------------


def test_speech_commands_reads_the_torchaudio_layout(tmp_path):
    task = tasks.build_task("speech_commands", root=_fake_speech_commands(tmp_path))
    assert (task.name, task.input_size, task.output_size, task.seq_len) == ("speech_commands", 13, 2, 100)
    assert (len(task.train), len(task.val), len(task.test)) == (6, 2, 4)
    assert {f.path.parent.name for f in task.train.files} == {"no", "yes"}, (
        "_background_noise_ is not a label"
    )
    # labels are the sorted folder names: no -> 0, yes -> 1
    assert all(f.label == ["no", "yes"].index(f.path.parent.name) for f in task.train.files)
    assert {f.path.name for f in task.val.files} == {"spk0_nohash_0.wav"}
    assert {f.path.name for f in task.test.files} == {"spk1_nohash_1.wav", "spk2_nohash_2.wav"}
    x, y = task.test[0]
    assert (x.shape, x.dtype, y.dtype) == ((100, 13), torch.float32, torch.int64)


def test_speech_commands_nested_folder_and_label_choice(tmp_path):
    _fake_speech_commands(tmp_path / "SpeechCommands" / "speech_commands_v0.02")
    task = tasks.build_task(
        "speech_commands", root=tmp_path, labels=["yes"], features="logmel", max_frames=20
    )
    assert (task.output_size, task.input_size, task.seq_len) == (1, 40, 20)
    assert {f.path.parent.name for f in task.train.files + task.test.files} == {"yes"}


def test_speech_commands_missing_folder_is_named(tmp_path):
    with pytest.raises(
        tasks.DataError, match=rf"Speech Commands folder not found: {tmp_path / 'sc'}.*validation_list"
    ):
        tasks.build_task("speech_commands", root=tmp_path / "sc")


@pytest.mark.parametrize("list_name", ["validation_list.txt", "testing_list.txt"])
def test_speech_commands_missing_list_is_named(tmp_path, list_name):
    (_fake_speech_commands(tmp_path) / list_name).unlink()
    with pytest.raises(
        tasks.DataError, match=rf"missing Speech Commands split list\(s\) \['.*{list_name}'\]"
    ):
        tasks.build_task("speech_commands", root=tmp_path)


def test_speech_commands_listed_but_missing_file_is_named(tmp_path):
    (_fake_speech_commands(tmp_path) / "yes" / "spk1_nohash_1.wav").unlink()
    with pytest.raises(
        tasks.DataError, match=r"testing_list\.txt lists yes/spk1_nohash_1\.wav, which is not in"
    ):
        tasks.build_task("speech_commands", root=tmp_path)


def test_speech_commands_unknown_label_is_named(tmp_path):
    with pytest.raises(tasks.DataError, match=r"label folder\(s\) \['maybe'\] not found"):
        tasks.build_task("speech_commands", root=_fake_speech_commands(tmp_path), labels=["yes", "maybe"])


def test_speech_commands_subset_per_class(tmp_path):
    task = tasks.build_task("speech_commands", root=_fake_speech_commands(tmp_path), max_per_class=1)
    assert (len(task.train), len(task.val), len(task.test)) == (2, 2, 2)
    assert torch.equal(task.train.labels.sort().values, torch.tensor([0, 1]))
