"""swapseg.experiments: the paper's comparisons, rerunnable with one command.

- :mod:`~swapseg.experiments.demo`: ``swapseg demo`` (phantoms -> training -> prediction
  -> scores);
- :mod:`~swapseg.experiments.full_vs_patch`: full volumes (with swapping) vs patches;
- :mod:`~swapseg.experiments.stats`: paired statistics, summary.json, figures;
- :mod:`~swapseg.experiments.markdown`: report.md.
"""

__all__: list[str] = []
