import pytest

from swapseg.errors import InputError
from swapseg.experiments.methods_bench import dice_trace
from swapseg.experiments.paper_configs import paper_candidates
from swapseg.models.unet3d import Isensee3DUNet
from swapseg.planner.profiles import PROFILES
from swapseg.planner.search import search

GiB = 2**30


@pytest.fixture(scope="module")
def trace192():
    return dice_trace(Isensee3DUNet(), (1, 4, 192, 192, 192))


def test_paper_configs_in_paper_order_on_p100(trace192):
    res = search(trace192, PROFILES["p100-nvlink"], 16 * GiB, extra=paper_candidates(trace192))
    by = {c.name: c.result for c in res.candidates}
    c1, c3, c4 = (by[f"paper-config-{k}"] for k in (1, 3, 4))
    assert c4.step_s < c3.step_s < c1.step_s
    assert c1.peak_bytes < min(by[f"paper-config-{k}"].peak_bytes for k in (2, 3, 4))
    assert c1.stall_s > c3.stall_s > c4.stall_s


def test_chosen_is_fastest_that_fits(trace192):
    res = search(trace192, PROFILES["p100-nvlink"], 8 * GiB)
    usable = 8 * GiB * 0.9
    fitting = [c for c in res.candidates if c.result.peak_bytes <= usable]
    assert res.chosen in fitting
    assert all(c.fits == (c.result.peak_bytes <= usable) for c in res.candidates)
    assert res.chosen.result.step_s <= min(c.result.step_s for c in fitting) * 1.001
    assert not next(c for c in res.candidates if c.name == "keep-all").fits


def test_keep_all_when_it_fits(trace192):
    assert search(trace192, PROFILES["h200"], 141 * GiB).chosen.name == "keep-all"


def test_error_says_how_much_is_missing(trace192):
    with pytest.raises(InputError, match=r"GiB \(\d+ bytes\) missing"):
        search(trace192, PROFILES["p100-nvlink"], 2 * GiB)
    with pytest.raises(InputError, match="positive"):
        search(trace192, PROFILES["p100-nvlink"], 0)


def test_plan_json_fields(trace192):
    d = search(trace192, PROFILES["v100-pcie3"], 16 * GiB,
               extra=paper_candidates(trace192)).as_dict()
    for row in d["candidates"]:
        assert {"name", "swapped_tensors", "swapped_bytes", "recomputed_tensors",
                "peak_bytes", "step_s", "fits"} <= set(row)
    names = [r["name"] for r in d["candidates"]]
    assert len(names) == len(set(names))
    assert {f"paper-config-{k}" for k in range(1, 5)} <= set(names)



def test_a_plan_that_changes_nothing_wins_a_tie():
    """Recomputing ops a profile counts as free ties keep-all on time and lowers the peak;
    the search keeps everything rather than recompute for nothing."""
    from swapseg.planner.search import rank
    from swapseg.planner.simulate import SimResult

    def result(step_s, peak, swapped=0, recomputed=0):
        return SimResult(step_s=step_s, compute_s=step_s, stall_s=0.0, recompute_s=0.0,
                         peak_bytes=peak, peak_saved_bytes=peak, swapped_tensors=0,
                         swapped_bytes=swapped, recomputed_tensors=recomputed)

    keep = result(1.0, 10 * GiB)
    free_recompute = result(1.0001, 9 * GiB, recomputed=3)
    swap = result(1.0, 8 * GiB, swapped=GiB)
    faster = result(0.9, 10 * GiB, swapped=GiB)
    order = sorted([free_recompute, swap, keep, faster], key=lambda r: rank(r, 1.0))
    assert order == [faster, keep, free_recompute, swap]
