import csv
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from swapseg.cli import main
from swapseg.cli.train_cmd import parse_bytes
from swapseg.offload.policy import MemoryPlan
from swapseg.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(out), "--preset", "tiny",
                 "--shape", "16", "--no-progress", *extra])


@pytest.mark.parametrize("text, value", [("16GiB", 16 * 2**30), ("500MB", 500 * 10**6),
                                         ("1e9B", 10**9), ("2 kib", 2048)])
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("extra, words", [
    (["--swap-exclude", "decoder.*"], "--swap-exclude needs --swap all"),
    (["--swap", "auto", "--swap-prefetch", "2"], "--swap auto chooses the plan"),
    (["--swap", "all", "--memory-budget", "1GiB"], "only used with --swap auto"),
    (["--swap", "nosuch.json"], "nosuch.json"),
    (["--swap", "all", "--swap-prefetch", "0"], "prefetch must be >= 1"),
    (["--shape", "15"], "shape"),
    (["--fold", "x"], "--fold 'x'"),
    (["--device", "cuda:7"], "no such CUDA device"),
    (["--trace-step", "2"], "--trace-step traces the swap engine"),
    (["--swap", "auto", "--memory-budget", "lots"], "not a memory size"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, synth, extra, words):
    assert _train(synth, tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "config.json").exists()  # nothing half-written


def test_preset_policy_kept_and_adjusted(tmp_path):
    from swapseg.cli import build_parser
    from swapseg.cli.train_cmd import config_from_args

    def cfg(*extra):
        args = build_parser().parse_args(["train", "--data", str(tmp_path), "--out",
                                          str(tmp_path / "r"), "--preset", "demo", *extra])
        return config_from_args(args)

    assert cfg().swap.tier == "disk"  # the demo preset swaps, to disk on a CPU
    assert cfg("--swap-prefetch", "4").swap.replace(prefetch=1) == cfg().swap
    assert cfg("--swap", "none").swap is None
    assert cfg("--swap-tier", "host").swap.tier == "host"


def test_demo_preset_swaps_where_it_frees_memory_and_so_does_not_warn(tmp_path, monkeypatch):
    from swapseg.cli import build_parser
    from swapseg.cli.train_cmd import config_from_args, host_tier_warning

    def cfg(*extra):
        args = build_parser().parse_args(["train", "--data", str(tmp_path), "--out",
                                          str(tmp_path / "r"), "--preset", "demo", *extra])
        return config_from_args(args)

    cpu = cfg()
    assert (cpu.device, cpu.plan.name, cpu.swap.tier) == ("cpu", "swap-all", "disk")
    assert host_tier_warning(cpu.swap, cpu.device) is None
    assert host_tier_warning(cfg("--swap-tier", "host").swap, "cpu") is not None
    assert cfg("--swap", "all").plan == cpu.plan  # --swap all is the demo's swap-all
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    gpu = cfg("--device", "cuda")  # the preset's plan follows the run's device
    assert (gpu.swap.tier, gpu.plan.name) == ("cuda", "swap-all")
    assert cfg("--device", "cuda", "--swap", "all").plan == gpu.plan


def test_swap_all_on_a_cpu_runs_the_disk_tier_the_preflight_predicted(tmp_path, synth,
                                                                        capsys):
    run = tmp_path / "all"
    assert _train(synth, run, "--epochs", "1", "--swap", "all") == 0
    out = capsys.readouterr().out
    assert "memory plan swap-all, swapping to disk" in out
    cfg = json.loads((run / "config.json").read_text())
    rec = json.loads((run / "plan.json").read_text())
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    # the plan predicted (plan.json) is the plan that ran (config.json, the checkpoint)
    assert cfg["plan"]["swap"]["tier"] == "disk"
    assert rec["plan"] == cfg["plan"] == ckpt["config"]["plan"]
    pred, measured = rec["predicted"], rec["measured"]
    assert pred["swapped_tensors"] > 0 and len(measured) == 1
    # the engine swaps what the simulator predicted, give or take a tensor the trace
    # and the engine count differently
    assert abs(measured[0]["swapped_tensors"] / pred["swapped_tensors"] - 1) < 0.05
    assert set(pred) >= {"peak_bytes", "peak_saved_bytes"} <= set(measured[0])


def test_missing_data_dir(tmp_path, capsys):
    assert _train(tmp_path / "nothing", tmp_path / "run") == 2
    assert "nothing" in capsys.readouterr().err


def test_train_with_swap_flags_records_resolved_policy(tmp_path, synth, capsys):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"exclude": ["decoder.*"], "prefetch": 3}))
    run = tmp_path / "run"
    trace = importlib.util.find_spec("swapseg.offload.timeline") is not None
    assert _train(synth, run, "--epochs", "2", "--swap", str(policy), "--swap-tier", "host",
                  "--swap-min-bytes", "1024", *(["--trace-step", "1"] if trace else [])) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["plan"]["swap"] == {"n_tensors": -1, "include": [], "exclude": ["decoder.*"],
                           "min_bytes": 1024, "prefetch": 3, "swap_branches": False,
                           "tier": "host", "disk_dir": None, "max_inflight_bytes": -1,
                           "storages": []}
    assert cfg["batch_size"] == 1 and cfg["trace_step"] == (1 if trace else None)
    if trace:
        assert json.loads((run / "timeline.json").read_text())["step"] == 1
        assert (run / "timeline.png").is_file()
    with open(run / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and float(rows[0]["swap_swapped"]) > 0
    stats = json.loads((run / "swap_stats.json").read_text())
    # excluded scopes never leave the device
    assert all(v["swapped"] == 0 for k, v in stats["first_step"]["by_scope"].items()
               if k.startswith("decoder."))
    cap = capsys.readouterr()
    out = cap.out
    assert "epoch 2/2" in out and "data-wait" in out and "swap" in out
    # host-tier swapping on a CPU frees nothing: one warning line says so
    assert sum("saves no memory" in ln for ln in cap.err.splitlines()) == 1
    assert json.loads((run / "plan.json").read_text())["plan"] == cfg["plan"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["plan"]["swap"][
        "prefetch"] == 3


def test_fold_all_and_resume_of_finished_run(tmp_path, synth, capsys):
    run = tmp_path / "cv"
    assert _train(synth, run, "--epochs", "1", "--folds", "3", "--fold", "all") == 0
    cv = json.loads((run / "crossval.json").read_text())
    assert [f["fold"] for f in cv["folds"]] == [0, 1, 2]
    splits = json.loads((run / "splits.json").read_text())
    tested = sorted(c for s in splits["splits"] for c in s["test"])
    assert tested == splits["cases"]
    for k in range(3):
        assert load_checkpoint(run / f"fold{k}" / "checkpoints" / "last.pt")["epoch"] == 1
    # resuming a finished run redoes nothing
    capsys.readouterr()
    assert main(["train", "--out", str(run / "fold1"), "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "after epoch 1" in out and "epoch 2/" not in out


def test_swap_auto_plans_once_into_plan_json(tmp_path, synth, capsys):
    run = tmp_path / "auto"
    assert _train(synth, run, "--epochs", "1", "--swap", "auto",
                  "--memory-budget", "64MiB") == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("plan: "))
    assert "predicted peak" in line and "of 64.00 MiB budget" in line and "{" not in line
    assert "step time" in line
    measured = next(ln for ln in out.splitlines() if ln.startswith("measured after"))
    assert "peak RSS" in measured and "of 64.00 MiB budget" in measured
    rec = json.loads((run / "plan.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    assert "memory_budget_bytes" not in cfg and "swap" not in cfg
    # on a CPU the planner swaps to disk or recomputes, never to host memory
    assert cfg["plan"]["swap"] is None or cfg["plan"]["swap"]["tier"] == "disk"
    assert cfg["plan"] == rec["plan"] and rec["plan"]["name"] and rec["line"] == line
    assert rec["budget_bytes"] == 64 * 2**20 and rec["input_shape"] == [1, 4, 16, 16, 16]
    pred = rec["predicted"]
    assert 0 < pred["peak_bytes"] <= 64 * 2**20 and pred["step_s"] > 0
    assert len(rec["measured"]) == 1
    m = rec["measured"][0]
    assert m["peak_bytes"] > 0 and m["peak_source"] == "the process's peak RSS"
    assert m["within_budget"] == (m["peak_bytes"] <= 64 * 2**20)
    # a resume reuses the plan (no planning) and adds its own measured first step
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2",
                 "--no-progress"]) == 0
    assert "plan: " not in capsys.readouterr().out
    again = json.loads((run / "plan.json").read_text())
    assert again["plan"] == rec["plan"] and len(again["measured"]) == 2
    assert json.loads((run / "config.json").read_text())["plan"] == rec["plan"]
    # --overwrite replaces the plan too: another budget is planned afresh
    assert _train(synth, run, "--epochs", "1", "--swap", "auto", "--memory-budget", "1GiB",
                  "--overwrite") == 0
    assert json.loads((run / "plan.json").read_text())["budget_bytes"] == 2**30


def test_swap_auto_for_all_folds_plans_once(tmp_path, synth, monkeypatch):
    from swapseg.training import planning

    calls = []
    real = planning.plan_memory
    monkeypatch.setattr(planning, "plan_memory",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    run = tmp_path / "cv"
    assert _train(synth, run, "--epochs", "1", "--folds", "3", "--fold", "all",
                  "--swap", "auto", "--memory-budget", "64MiB") == 0
    assert calls == [1]
    rec = json.loads((run / "plan.json").read_text())
    for k in range(3):
        assert json.loads((run / f"fold{k}" / "config.json").read_text())["plan"] == rec["plan"]
        assert not (run / f"fold{k}" / "plan.json").exists()
    assert sorted(m["fold"] for m in rec["measured"]) == [0, 1, 2]


def test_plan_out_file_trains_with_swap_file(tmp_path, synth):
    plan_dir = tmp_path / "plan"
    # a plan is concrete for the device it was made for: this CPU (its disk tier)
    assert main(["plan", "--shape", "4x16x16x16", "--profile", "local",
                 "--memory-budget", "5800KiB", "--model-kwargs",
                 '{"base_filters": 4, "depth": 3}', "--out", str(plan_dir)]) == 0
    written = json.loads((plan_dir / "memory_plan.json").read_text())
    assert written["swap"] is not None  # keep-all does not fit: a plan that swaps
    run = tmp_path / "run"
    assert _train(synth, run, "--epochs", "1", "--swap",
                  str(plan_dir / "memory_plan.json")) == 0
    ran = MemoryPlan.from_dict(written).concrete("cpu")  # its tier auto: disk on a CPU
    assert json.loads((run / "config.json").read_text())["plan"] == ran.to_dict()


@pytest.mark.parametrize("extra", [[], ["--swap", "all"]])
def test_a_step_that_cannot_fit_stops_before_anything_is_written(tmp_path, synth, capsys,
                                                                 monkeypatch, extra):
    monkeypatch.setenv("SWAPSEG_AVAILABLE_BYTES", "1MiB")
    run = tmp_path / "run"
    assert _train(synth, run, *extra) == 2
    # one error line (a --swap all run on a CPU is also warned that host swapping saves nothing)
    err = "\n".join(ln for ln in capsys.readouterr().err.strip().splitlines()
                    if not ln.startswith("swapseg: warning: host-tier"))
    assert len(err.splitlines()) == 1 and "predicted to peak at" in err
    assert "1.00 MiB given by SWAPSEG_AVAILABLE_BYTES" in err
    assert "--shape" in err and "--zoom" in err and "--swap auto --memory-budget" in err
    assert not run.exists() or not any(run.iterdir())  # no config, splits, plan


def test_a_slow_cpu_step_prints_the_predicted_epoch_time(tmp_path, synth, capsys,
                                                         monkeypatch):
    from swapseg.training import planning

    monkeypatch.setattr(planning, "SLOW_EPOCH_S", 0.0)
    assert _train(synth, tmp_path / "run", "--epochs", "1") == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines()
                if ln.startswith("warning: predicted on this CPU"))
    assert "per epoch of 3 steps" in line and "s per step" in line


def test_disk_tier_short_of_space_warns_in_one_line(tmp_path, synth, capsys, monkeypatch):
    from swapseg.training import planning

    seen = []
    monkeypatch.setattr(planning, "disk_shortfall",
                        lambda folder, nbytes: seen.append((folder, nbytes)) or 12345)
    disk_dir = tmp_path / "swapdisk"
    assert _train(synth, tmp_path / "run", "--epochs", "1", "--swap", "all", "--swap-tier",
                  "disk", "--swap-disk-dir", str(disk_dir)) == 0
    warn = [ln for ln in capsys.readouterr().out.splitlines() if "disk tier's folder" in ln]
    assert len(warn) == 1 and "12345 bytes" in warn[0] and "--swap-disk-dir" in warn[0]
    (folder, nbytes), = seen
    assert Path(folder) in (disk_dir, tmp_path) and nbytes > 0


def test_patch_mode_trains_on_patches_and_validates_whole_volumes(tmp_path, synth, capsys):
    run = tmp_path / "patch"
    assert main(["train", "--data", str(synth), "--out", str(run), "--preset", "tiny",
                 "--shape", "16", "--mode", "patch", "--patch", "8", "--patches-per-volume",
                 "2", "--tumor-fraction", "0.5", "--epochs", "1", "--no-progress"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["mode"], cfg["patch"], cfg["batch_size"]) == ("patch", 8, 2)
    with open(run / "log.csv", newline="") as fh:
        row = next(csv.DictReader(fh))
    # 3 training volumes x 2 patches in batches of 2 -> 3 steps
    assert row["steps"] == "3" and 0.0 <= float(row["val_dice_WT"]) <= 1.0


def test_nan_loss_exits_2_naming_epoch_and_step(tmp_path, synth, capsys, monkeypatch):
    from swapseg.training import loop

    real = loop.make_loss

    def nan_in_epoch_2(name, eps):
        f, calls = real(name, eps), {"n": 0}

        def loss(logits, target):
            calls["n"] += torch.is_grad_enabled()  # training steps only, not validation
            out = f(logits, target)
            return out * float("nan") if calls["n"] > 3 else out  # 3 training steps/epoch
        return loss

    monkeypatch.setattr(loop, "make_loss", nan_in_epoch_2)
    run = tmp_path / "nan"
    assert _train(synth, run, "--epochs", "3") == 2
    err = capsys.readouterr().err.strip()
    assert "epoch 2, step 1" in err and "last.pt" in err and len(err.splitlines()) == 1
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1


def test_corrupt_case_found_in_a_worker_is_named_in_one_line(tmp_path, synth, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth, data)
    victim = sorted(data.iterdir())[0]
    flair = next(victim.glob("*_flair.nii.gz"))
    flair.write_bytes(flair.read_bytes()[:200])  # truncated gzip
    rc = _train(data, tmp_path / "run", "--epochs", "1", "--workers", "1", "--folds", "3")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert flair.name in err and "Caught" not in err


def test_swap_auto_without_a_budget_plans_for_the_devices_memory(tmp_path, synth, capsys,
                                                                 monkeypatch):
    from swapseg.devices import AVAILABLE_ENV

    monkeypatch.setenv(AVAILABLE_ENV, "64MiB")  # what the device has available
    run = tmp_path / "auto"
    assert _train(synth, run, "--epochs", "1", "--swap", "auto") == 0
    assert "of 64.00 MiB budget" in capsys.readouterr().out
    rec = json.loads((run / "plan.json").read_text())
    assert rec["budget_bytes"] == 64 * 2**20
    assert rec["plan"] == json.loads((run / "config.json").read_text())["plan"]
