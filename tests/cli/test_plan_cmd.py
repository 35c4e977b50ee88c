import json

from swapseg.cli import main


def test_plan_writes_json_and_timeline(tmp_path, capsys):
    out = tmp_path / "p"
    rc = main(["plan", "--model", "isensee", "--shape", "4x64x64x64", "--device",
               "p100-nvlink", "--memory", "0.4GiB", "--out", str(out)])
    assert rc == 0
    d = json.loads((out / "plan.json").read_text())
    assert (out / "timeline.png").stat().st_size > 10_000
    assert d["chosen"]["fits"] and d["chosen"]["peak_bytes"] <= 0.4 * 2**30 * 0.9
    names = {c["name"] for c in d["candidates"]}
    assert {f"paper-config-{k}" for k in range(1, 5)} <= names
    for c in d["candidates"]:
        assert {"name", "swapped_tensors", "swapped_bytes", "recomputed_tensors",
                "peak_bytes", "step_s", "fits"} <= set(c)
    text = capsys.readouterr().out
    assert "paper-config-4" in text and f"chosen: {d['chosen']['name']}" in text


def test_plan_bad_input_exit_2_nothing_written(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["plan", "--shape", "4x64x64x64", "--memory", "10MB",
                 "--out", str(out)]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["plan", "--shape", "4x64x64", "--memory", "1GiB", "--out", str(out)]) == 2
    assert main(["plan", "--shape", "4x64x64x64", "--memory", "lots", "--out",
                 str(out)]) == 2
    assert main(["plan", "--shape", "4x60x64x64", "--memory", "1GiB", "--out",
                 str(out)]) == 2
    assert main(["plan", "--shape", "4x64x64x64", "--device", "tpu", "--memory", "1GiB",
                 "--out", str(out)]) == 2
    assert main(["plan", "--shape", "4x64x64x64", "--depth", "1", "--memory", "1GiB",
                 "--out", str(out)]) == 2
    assert main(["plan", "--shape", "4x64x64x64", "--margin", "1.5", "--memory", "1GiB",
                 "--out", str(out)]) == 2
    assert not out.exists()
