"""`swapseg predict` and `swapseg evaluate` end to end, on a checkpoint from `swapseg.training`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from swapseg.cli import main
from swapseg.data.synthetic import synthesize
from swapseg.training.config import tiny
from swapseg.training.loop import train

SHAPE = (27, 30, 22)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data folder, best.pt) of a one-epoch tiny run on three synthetic cases."""
    root = tmp_path_factory.mktemp("cli")
    synthesize(root / "data", 3, SHAPE, 0)
    config = tiny(data=str(root / "data"), out=str(root / "run"), folds=3, max_epochs=1,
                  shape=(32, 32, 32))
    train(config, progress=False, echo=lambda _: None)
    best = root / "run" / "checkpoints" / "best.pt"
    assert best.is_file()
    return root / "data", best


@pytest.fixture(scope="module")
def predicted(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data, best = trained
    pred = tmp_path_factory.mktemp("pred")
    assert main(["predict", "--checkpoint", str(best), "--input", str(data),
                 "--out", str(pred), "--window", "32", "--overlap", "0.25"]) == 0
    return pred


def test_predict_then_evaluate(tmp_path: Path, trained, predicted, capsys) -> None:
    data, best = trained
    pred, ev = predicted, tmp_path / "eval"
    cases = sorted(p.name for p in data.iterdir())
    assert sorted(p.name for p in pred.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in cases]
    for c in cases:
        out, ref = nib.load(pred / f"{c}.nii.gz"), nib.load(data / c / f"{c}_flair.nii.gz")
        assert out.shape == SHAPE
        np.testing.assert_allclose(out.affine, ref.affine)
        assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1, 2, 4}
    meta = json.loads((pred / "predictions.json").read_text())
    assert meta["window"] == [32, 32, 32] and meta["n_cases"] == 3
    assert meta["training_window"] == [32, 32, 32] and meta["inference"] == "windows"
    # every brain box of these 27x30x22 cases fits one 32^3 window: that is one pass
    assert {c["inference"] for c in meta["cases"]} == {"one-pass"}

    assert main(["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(ev)]) == 0
    assert "mean Dice WT" in capsys.readouterr().out
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["n_cases"] == 3
    for key in ("dice", "sensitivity", "specificity", "hd95_mm"):
        assert set(summary[key]) == {"WT", "TC", "ET"}
        assert set(summary["median"][key]) == {"WT", "TC", "ET"}
        assert set(summary["std"][key]) == {"WT", "TC", "ET"}
    assert all(0.0 <= summary["dice"][r] <= 1.0 for r in ("WT", "TC", "ET"))
    assert (ev / "per_case.csv").read_text().count("\n") == 4
    assert (ev / "boxplot.png").is_file() and len(list((ev / "overlays").glob("*.png"))) == 3


def test_errors_exit_2_with_one_line(tmp_path: Path, trained, predicted, capsys) -> None:
    data, best = trained
    pred = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(tmp_path / "nope.pt"), "--input", str(data),
                 "--out", str(pred)]) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert not pred.exists()
    assert main(["predict", "--checkpoint", str(best), "--input", str(data),
                 "--out", str(pred), "--window", "6"]) == 2
    assert "window 6" in capsys.readouterr().err

    shutil.copytree(predicted, pred)
    victim = sorted(pred.glob("*.nii.gz"))[1]
    ev = tmp_path / "eval"
    moved = victim.rename(tmp_path / victim.name)
    assert main(["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(ev)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert err.startswith("swapseg: error: no prediction for case ")
    assert victim.name.removesuffix(".nii.gz") in err and "\n" not in err
    img = nib.load(moved)
    cut = np.asarray(img.dataobj)[:, :, :-2]
    nib.save(nib.Nifti1Image(cut, img.affine, img.header), victim)
    assert main(["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(ev)]) == 2
    assert f"{victim}: shape" in capsys.readouterr().err
    assert not ev.exists()


def test_evaluate_only_the_predicted_cases(tmp_path: Path, trained, predicted, capsys) -> None:
    """Predictions for 1 of the 3 truth cases: an error that points to --only-predicted,
    and with it, that case scored and one line naming the 2 skipped."""
    data, _ = trained
    pred, ev = tmp_path / "pred", tmp_path / "eval"
    pred.mkdir()
    cases = sorted(p.name for p in data.iterdir())
    shutil.copy(predicted / f"{cases[1]}.nii.gz", pred)
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(ev)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"no prediction for case {cases[0]}" in err, err
    assert "2 of 3 truth cases have none; --only-predicted scores the 1 that do" in err
    assert not ev.exists()
    assert main(["evaluate", "--pred", str(pred), "--truth", str(data), "--out", str(ev),
                 "--only-predicted", "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("1 cases, mean Dice WT")
    assert out[1] == (f"skipped 2 of 3 truth cases without a prediction (--only-predicted): "
                      f"{cases[0]}, {cases[2]}")
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["n_cases"] == 1 and summary["n_truth_cases"] == 3
    assert summary["skipped_cases"] == [cases[0], cases[2]]
    assert (ev / "per_case.csv").read_text().splitlines()[1].startswith(cases[1])
    # a folder with no prediction for any truth case is still an error
    assert main(["evaluate", "--pred", str(tmp_path / "eval" / "overlays"), "--truth",
                 str(data), "--out", str(tmp_path / "ev2"), "--only-predicted"]) == 2
    assert "for any of the 3 truth cases" in capsys.readouterr().err


def test_predict_a_fold_of_a_run(tmp_path: Path, trained, capsys) -> None:
    data, best = trained
    run = best.parent.parent
    test_ids = json.loads((run / "splits.json").read_text())["splits"][0]["test"]
    out = tmp_path / "fold0"
    assert main(["predict", "--run", str(run), "--fold", "0", "--out", str(out),
                 "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert cap.err == ""  # --no-progress: not even plain lines
    assert sorted(p.name for p in out.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in test_ids]
    assert main(["predict", "--run", str(run), "--fold", "1", "--out", str(tmp_path / "x")]) == 2
    assert "is the run of fold 0, not fold 1" in capsys.readouterr().err


def test_progress_is_plain_lines_off_a_terminal(tmp_path: Path, trained, predicted,
                                                capsys) -> None:
    data, best = trained
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(predicted), "--truth", str(data),
                 "--out", str(tmp_path / "ev"), "--overlays", "0"]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(ln.startswith("evaluate: ") for ln in lines)
    assert "\r" not in "".join(lines) and lines[-1].startswith("evaluate: 3/3 ")
    assert main(["evaluate", "--pred", str(predicted), "--truth", str(data),
                 "--out", str(tmp_path / "ev2"), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("argv", [
    ["--window", "abc"], ["--window", "6"], ["--window", "0"], ["--overlap", "2"],
    ["--overlap", "x"], ["--fold", "-1"], ["--fold", "0"], ["--inference", "fast"],
    ["--convention", "brats1999"], ["--device", "tpu"], ["--device", "cuda:7"],
    ["--inference", "one-pass", "--window", "32"], ["--input", "{case}"],
    ["--input", "{missing}"], ["--run", "{data}", "--fold", "0"],
])
def test_every_bad_predict_flag_is_one_line(tmp_path: Path, trained, capsys, argv) -> None:
    data, best = trained
    case = sorted(p for p in data.iterdir())[0]
    argv = [a.format(case=case, missing=tmp_path / "nope", data=data) for a in argv]
    base = ["predict", "--out", str(tmp_path / "pred")]
    if "--run" not in argv:
        base += ["--checkpoint", str(best)]
    if "--input" not in argv and "--run" not in argv:
        base += ["--input", str(data)]
    try:
        code = main(base + argv)
    except SystemExit as exc:  # argparse's own errors: usage, then one error line
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert "Traceback" not in "\n".join(err)
    assert err[-1].startswith(("swapseg: error: ", "usage: swapseg predict", "swapseg predict: "))
    assert not (tmp_path / "pred").exists()
    if "{case}" in " ".join(argv) or argv[:2] == ["--input", str(case)]:
        assert "this looks like a single case; pass its parent folder" in err[-1]


@pytest.mark.parametrize("argv", [
    ["--overlays", "-1"], ["--overlays", "many"], ["--empty", "zero"],
    ["--convention", "nope"], ["--truth", "{missing}"], ["--pred", "{missing}"],
])
def test_every_bad_evaluate_flag_is_one_line(tmp_path: Path, trained, predicted, capsys,
                                             argv) -> None:
    data, _ = trained
    argv = [a.format(missing=tmp_path / "nope") for a in argv]
    opts = {"--pred": str(predicted), "--truth": str(data), "--out": str(tmp_path / "ev")}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        opts[flag] = value
    try:
        code = main(["evaluate", *[x for kv in opts.items() for x in kv]])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith(("swapseg: error: ", "swapseg evaluate: error: "))
    assert not (tmp_path / "ev").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_experiment_device_cuda_without_cuda_is_one_line(tmp_path: Path, trained, capsys) -> None:
    data, _ = trained
    out = tmp_path / "exp"
    assert main(["experiment", "full-vs-patch", "--data", str(data), "--out", str(out),
                 "--device", "cuda"]) == 2
    assert capsys.readouterr().err == ("swapseg: error: --device cuda: no such CUDA device "
                                       "on this machine (use --device cpu)\n")
    assert not out.exists()
