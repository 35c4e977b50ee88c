"""`swapseg nnunet`: the trainers folder and the raw synthetic dataset (no nnU-Net needed)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from swapseg.cli import main
from swapseg.integrations.nnunet.dataset import _nnunet_labels


def test_trainers_prints_the_ext_folder(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nnunet", "trainers"]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert (folder / "swapseg_trainers.py").is_file()
    # nnU-Net imports every module of the folder: only the trainers module is there
    assert sorted(p.name for p in folder.glob("*.py")) == ["__init__.py", "swapseg_trainers.py"]


def test_brats_labels_map_to_nnunets_convention() -> None:
    seg = np.array([0, 1, 2, 4], np.uint8)  # BraTS: core 1, edema 2, enhancing 4
    assert _nnunet_labels(seg).tolist() == [0, 2, 1, 3]


def test_synth_writes_the_raw_layout(tmp_path: Path) -> None:
    assert main(["nnunet", "synth", "7", "--cases", "5", "--shape", "17x16x18",
                 "--raw", str(tmp_path)]) == 0
    root = tmp_path / "Dataset007_SynthBraTS"
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["numTraining"] == 5 and meta["file_ending"] == ".nii.gz"
    assert meta["regions_class_order"] == [1, 2, 3]
    images = sorted(p.name for p in (root / "imagesTr").iterdir())
    assert len(images) == 20 and images[:4] == [f"SynthBraTS_000_{c:04d}.nii.gz" for c in range(4)]
    seg = np.asarray(nib.load(str(root / "labelsTr" / "SynthBraTS_000.nii.gz")).dataobj)
    assert seg.shape == (17, 16, 18) and set(np.unique(seg)) <= {0, 1, 2, 3}
    assert not list(tmp_path.glob(".*"))  # no temporary folder left


@pytest.mark.parametrize("argv, message", [
    (["nnunet", "synth", "7", "--cases", "4"], "at least 5 cases"),
    (["nnunet", "synth", "1000", "--cases", "5"], "1..999"),
])
def test_bad_synth_input_is_one_line_exit_2(argv: list[str], message: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--raw", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not list(tmp_path.iterdir())


def test_train_without_nnunet_paths_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("nnunetv2")
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    assert main(["nnunet", "train", "7", "3d_fullres", "0", "--device", "cpu"]) == 2
    assert "nnUNet_preprocessed" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a torch without a CUDA GPU")
@pytest.mark.parametrize("command", [
    ["train", "7", "3d_fullres", "0"],
    ["predict", "-i", ".", "-o", "out", "-d", "7", "-c", "3d_fullres"],
])
def test_device_cuda_without_a_gpu_is_one_line_exit_2(
        command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["nnunet", *command, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device cuda" in err and "\n" not in err
    assert not list(tmp_path.iterdir())  # nothing written
