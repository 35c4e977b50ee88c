"""``report.md`` of the full-vs-patch experiment, next to the paper's figures."""

from __future__ import annotations

from typing import Any

__all__ = ["report_md"]

REGIONS = ("WT", "TC", "ET")


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _quality(s: dict[str, Any]) -> list[str]:
    modes, paper, diffs = s["modes"], s["paper"], s["paired_full_minus_patch"]
    lines = ["| metric | region | full | patch | full − patch [95% CI] | std over cases | "
             "std over folds | full better / worse | Wilcoxon p | paper full | paper patch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in ("dice", "sensitivity", "specificity", "hd95_mm"):
        for r in REGIONS:
            d = diffs[m][r]
            ci = "" if d["ci95"] is None else f" [{_f(d['ci95'][0])}, {_f(d['ci95'][1])}]"
            pf = paper["full"].get(m, {}).get(r)
            pp = paper["patch"].get(m, {}).get(r)
            lines.append(
                f"| {m} | {r} | {_f(modes['full'][m][r])} | {_f(modes['patch'][m][r])} | "
                f"{_f(d['mean_diff'])}{ci} | {_f(d['std_diff'])} | {_f(d['fold_std'])} | "
                f"{d['full_better']} / {d['patch_better']} | {_f(d['wilcoxon_p'])} | "
                f"{_f(pf)} | {_f(pp)} |")
    return lines


def _time(s: dict[str, Any]) -> list[str]:
    t, paper = s["time"], s["paper"]
    lines = ["| mode | iterations / epoch | mean epoch s | epochs run (best) | stop | "
             "optimizer steps | s to best epoch | total s per fold | paper iterations / epoch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in ("full", "patch"):
        x = t[m]
        runs = ", ".join(f"{e} ({b})" for e, b in zip(x["epochs"], x["best_epoch"], strict=True))
        lines.append(f"| {m} | {', '.join(map(str, x['iterations_per_epoch']))} | "
                     f"{_f(x['epoch_s_mean'], 1)} | {runs} | {', '.join(x['stop_reason'])} | "
                     f"{', '.join(map(str, x['optimizer_steps']))} | "
                     f"{', '.join(_f(v, 0) for v in x['best_s'])} | "
                     f"{', '.join(_f(v, 0) for v in x['total_s'])} | "
                     f"{paper['iterations_per_epoch'][m]} |")
    r = t["ratios"]
    paper_iter = paper["iterations_per_epoch"]["patch"] / paper["iterations_per_epoch"]["full"]
    lines += ["", f"- patch / full, epoch time: **{_f(r['epoch_s_patch_over_full'], 2)}x** "
                  f"(paper {paper['epoch_time_patch_over_full']}x)",
              f"- patch / full, total time to the stop: **{_f(r['total_s_patch_over_full'], 2)}x**"
              f" (paper {paper['total_time_patch_over_full']}x)",
              f"- patch / full, time to the best epoch (the tested checkpoint): "
              f"{_f(r['best_s_patch_over_full'], 2)}x",
              f"- patch / full, optimizer steps in all: "
              f"{_f(r['optimizer_steps_patch_over_full'], 2)}x",
              f"- patch / full, iterations per epoch: "
              f"{_f(r['iterations_per_epoch_patch_over_full'], 2)}x (paper "
              f"{paper_iter:.2f}x)",
              "- Epoch seconds include the whole-volume validation pass (sliding windows of "
              "the patch size for the patch model)."]
    return lines


def report_md(s: dict[str, Any]) -> str:
    st, env = s["settings"], s["environment"]
    n = s["modes"]["full"]["n_cases"]
    lines = [
        "# Full volumes vs patches", "",
        f"Command: `{s['command'] or 'swapseg experiment full-vs-patch'}`  ",
        f"Wall time: {s['wall_s']:.0f} s (this invocation).  ",
        f"Hardware: {env.get('cpu')} ({env.get('cpu_count')} CPUs, torch threads "
        f"{env.get('torch_threads')}), GPU: {env.get('gpu', 'none')}; torch "
        f"{env.get('torch')}, python {env.get('python')}.", "",
        f"Settings: {st['run_folds']} of {st['folds']} folds, volumes {st['shape']} (zoom "
        f"{st['zoom']}), patches {st['patch']}^3 x{st['patches_per_volume']} per volume and "
        f"epoch, U-Net base {st['base_filters']} depth {st['depth']}, at most "
        f"{st['max_epochs']} epochs"
        + (f" or {st['max_train_s']:.0f} s of training" if st.get("max_train_s") else "")
        + f", early stop {st['early_stop']}, LR patience "
        f"{st['lr_patience']}, seed {st['seed']}; full-volume swapping: "
        f"{st['swap']} -> {_plan_name(st)}.", "",
        f"## Quality on {n} test cases (each tested once, in its fold)", "",
        *_quality(s), "",
        "Specificity is computed over the whole image grid (see docs/evaluation.md); the "
        "paper's values are lower, so it probably counted a smaller region.", "",
        "## Time", "", *_time(s), "",
        "## Figures", "", "![Dice box plots](boxplot_dice.png)", "",
        "Validation loss and Dice against training time, per run (dots: best epochs):", "",
        "![Learning curves](curves.png)", "",
    ]
    if s.get("overlays"):
        lines += ["Cases where the two modes differ most (truth | full | patches):", ""]
        lines += [f"![{c}](overlays/{c}.png)" for c in s["overlays"]]
    return "\n".join(lines) + "\n"


def _plan_name(settings: dict) -> str:
    """The full arm's memory plan by name (older summaries kept only its swap policy)."""
    plan = settings.get("full_plan") or {}
    return plan.get("name") or str(settings.get("full_swap_policy") or "none")
