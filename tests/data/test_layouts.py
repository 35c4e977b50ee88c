from __future__ import annotations

import pytest

from swapseg.data.brats import MODALITIES, find_cases
from swapseg.errors import InputError


def test_brats2018_flat(tmp_path, make_case):
    make_case(tmp_path, "Brats18_TCIA01_201_1")
    make_case(tmp_path, "Brats18_2013_3_1", seg=False)
    idx = find_cases(tmp_path)
    assert idx.layout == "brats2017-2018"
    assert [c.case_id for c in idx.cases] == ["Brats18_2013_3_1", "Brats18_TCIA01_201_1"]
    case = idx.cases[1]
    assert case.convention == "brats2017"
    assert case.images["t1"].name == "Brats18_TCIA01_201_1_t1.nii.gz"
    assert case.images["t1ce"].name == "Brats18_TCIA01_201_1_t1ce.nii.gz"
    assert case.seg is not None and idx.cases[0].seg is None  # no seg: allowed
    assert idx.problems == []


def test_brats2017_hgg_lgg_and_plain_nii(tmp_path, make_case):
    make_case(tmp_path / "HGG", "Brats17_CBICA_AAB_1")
    make_case(tmp_path / "LGG", "Brats17_TCIA_101_1", ext=".nii")
    idx = find_cases(tmp_path)
    assert idx.layout == "brats2017-2018-hgg-lgg"
    assert len(idx.cases) == 2
    assert idx.cases[1].images["flair"].suffix == ".nii"


@pytest.mark.parametrize("names", [["BraTS20_Training_001", "BraTS20_Training_002"],
                                   ["BraTS2021_00000", "BraTS2021_00002"],
                                   ["BraTS19_2013_10_1"]])
def test_brats2019_2021(tmp_path, make_case, names):
    for n in names:
        make_case(tmp_path, n)
    idx = find_cases(tmp_path)
    assert idx.layout == "brats2019-2021"
    assert [c.case_id for c in idx.cases] == names


def test_brats2023_gli(tmp_path, make_case):
    make_case(tmp_path, "BraTS-GLI-00000-000", style="brats2023", labels=(1, 2, 3))
    idx = find_cases(tmp_path)
    assert idx.layout == "brats2023-gli"
    (case,) = idx.cases
    assert case.convention == "brats2023"
    assert {m: p.name for m, p in case.images.items()} == {
        "flair": "BraTS-GLI-00000-000-t2f.nii.gz", "t1": "BraTS-GLI-00000-000-t1n.nii.gz",
        "t1ce": "BraTS-GLI-00000-000-t1c.nii.gz", "t2": "BraTS-GLI-00000-000-t2w.nii.gz"}
    assert case.seg.name == "BraTS-GLI-00000-000-seg.nii.gz"


def test_msd_task01(tmp_path, make_msd):
    root = make_msd(tmp_path / "Task01_BrainTumour", n=2, test_cases=1)
    idx = find_cases(root)
    assert idx.layout == "msd-task01"
    assert [c.case_id for c in idx.cases] == ["BRATS_001", "BRATS_002", "BRATS_003"]
    assert [c.seg is not None for c in idx.cases] == [True, True, False]
    assert all(c.convention == "msd" and c.channels == (0, 1, 2, 3) for c in idx.cases)


def test_msd_channel_order_from_dataset_json(tmp_path, make_msd):
    root = make_msd(tmp_path, n=1, order=("T2w", "t1gd", "FLAIR", "T1w"), test_cases=0)
    (case,) = find_cases(root).cases
    # MODALITIES = flair, t1, t1ce, t2 -> channels 2, 3, 1, 0
    assert MODALITIES == ("flair", "t1", "t1ce", "t2")
    assert case.channels == (2, 3, 1, 0)


def test_missing_modality_raises_naming_case(tmp_path, make_case):
    make_case(tmp_path, "Brats18_A_1")
    bad = make_case(tmp_path, "Brats18_B_1")
    (bad / "Brats18_B_1_t1ce.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case Brats18_B_1: missing modality t1ce"):
        find_cases(tmp_path)
    idx = find_cases(tmp_path, skip_bad=True)
    assert [c.case_id for c in idx.cases] == ["Brats18_A_1"]
    assert len(idx.problems) == 1 and "Brats18_B_1" in idx.problems[0]


def test_empty_and_missing_folder(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        find_cases(tmp_path / "nope")
    with pytest.raises(InputError, match="no BraTS or MSD cases found"):
        find_cases(tmp_path)
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        find_cases(tmp_path / "f.txt")


def test_all_bad_with_skip_bad_still_raises(tmp_path, make_case):
    bad = make_case(tmp_path, "Brats18_B_1")
    (bad / "Brats18_B_1_flair.nii.gz").unlink()
    with pytest.raises(InputError, match="1 bad cases left out"):
        find_cases(tmp_path, skip_bad=True)


def test_release_folder_wrapped_in_one_more(tmp_path, make_case, make_msd):
    make_case(tmp_path / "MICCAI_BraTS_2018_Data_Training" / "HGG", "Brats18_A_1")
    idx = find_cases(tmp_path)
    assert idx.layout == "brats2017-2018-hgg-lgg" and len(idx.cases) == 1
    make_msd(tmp_path / "msd" / "Task01_BrainTumour", n=1, test_cases=0)
    assert find_cases(tmp_path / "msd").layout == "msd-task01"
