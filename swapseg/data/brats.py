"""The BraTS data pipeline in one import: find cases, load, preprocess, restore, Dataset.

The pieces live in their own modules (``layouts``, ``loader``, ``preprocess``, ``dataset``);
this module is the stable public entry point that the rest of swapseg imports from.
"""

from __future__ import annotations

from swapseg.data.dataset import BratsVolumes
from swapseg.data.layouts import MODALITIES, Case, CaseIndex, find_cases
from swapseg.data.loader import LoadedCase, load_case
from swapseg.data.preprocess import PrepInfo, Preprocessed, preprocess, restore

__all__ = ["MODALITIES", "BratsVolumes", "Case", "CaseIndex", "LoadedCase", "PrepInfo",
           "Preprocessed", "find_cases", "load_case", "preprocess", "restore"]
