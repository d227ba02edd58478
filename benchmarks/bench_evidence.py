"""Issue 7's evidence: controlled comparisons of the papers' claims, each in one run of this script (same data,
same fold-0 split, same schedule, every arm with every seed; mean ± sd over seeds).

    .venv/bin/python benchmarks/bench_evidence.py class_weights --seeds 0 1 2     # plain Dice vs TCF / PCF / CBS
    .venv/bin/python benchmarks/bench_evidence.py class_weights_long --iterations 1200   # PCF / CBS, plateaus
    .venv/bin/python benchmarks/bench_evidence.py topk                            # Dice+CE vs Dice+TopK-CE
    .venv/bin/python benchmarks/bench_evidence.py blob                            # Dice+CE vs blob loss (MS lesions)
    .venv/bin/python benchmarks/bench_evidence.py focused_practice                # samplers, Dice per iteration
    .venv/bin/python benchmarks/bench_evidence.py cycle_noisy                     # 30 % corrupted training labels
    .venv/bin/python benchmarks/bench_evidence.py all --smoke                     # every code path in < 1 min

Every arm trains a fixed number of iterations (``--iterations``, ``--iters-per-epoch``; validation after every
epoch), so results do not depend on how fast an arm runs; ``--minutes`` gives every arm the same time budget
instead. The fingerprint, plan and preprocessed data are made once per comparison and shared by its arms.
Runs go to ``runs/evidence/<comparison>/<arm>/seed<k>``; an arm whose ``summary.json`` exists with the same
settings is not trained again (resume), an interrupted one continues from its last checkpoint. Writes
``benchmarks/results/evidence_<comparison>.md`` and ``evidence_<comparison>.png``. The aggregation and the verdict
rule are in ``evidence_lib.py``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from evidence_lib import (  # noqa: E402
    COMPARISONS,
    REPO,
    SHARED_DATA,
    SMOKE,
    Comparison,
    curve_mean,
    fmt,
    make_noisy_copy,
    mean_sd,
    read_run,
    schedule,
    stack,
    verdict,
)


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("comparison", nargs="+", choices=[*COMPARISONS, "all"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=None, help="only these arms (default: every arm)")
    ap.add_argument("--iterations", type=int, default=500, help="training iterations per arm (default 500)")
    ap.add_argument("--iters-per-epoch", type=int, default=50, help="iterations between validations")
    ap.add_argument("--minutes", type=float, default=None, help="a time budget per arm instead of --iterations")
    ap.add_argument("--data", type=Path, default=None, help="dataset folder (default: the comparison's own)")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--runs", type=Path, default=None, help="default runs/evidence (smoke: runs/evidence_smoke)")
    ap.add_argument("--results", type=Path, default=None,
                    help="report folder (default benchmarks/results; smoke: <runs>/results)")
    ap.add_argument("--smoke", action="store_true", help="tiny phantom data, 1 seed, 2 iterations per arm")
    ap.add_argument("--tag", default="", help="suffix of the report's name (e.g. _long: evidence_blob_long.md); "
                    "pair it with --runs so that the runs of another schedule stay apart")
    args = ap.parse_args(argv)
    import torch

    if args.threads or args.smoke:
        torch.set_num_threads(args.threads or 1)
    if args.smoke:  # 2 epochs of 1 iteration: class weights and FP's split act in the second epoch
        args.seeds, args.iterations, args.iters_per_epoch, args.minutes = args.seeds[:1], 2, 1, None
    runs = args.runs or REPO / "runs" / ("evidence_smoke" if args.smoke else "evidence")
    results = args.results or (runs / "results" if args.smoke else HERE / "results")
    names = list(COMPARISONS) if "all" in args.comparison else list(dict.fromkeys(args.comparison))
    cmd = "python benchmarks/bench_evidence.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    return [run_comparison(COMPARISONS[n], args, runs, results, cmd) for n in names]


def dataset_for(comp: Comparison, args: argparse.Namespace, runs: Path) -> Path:
    if args.smoke:
        from focusseg.synth import generate_phantom_dataset

        data = runs / "phantom_data"
        if not (data / "dataset.json").is_file():
            generate_phantom_dataset(data, n_cases=8, shape=(32, 32, 24), seed=0)
    else:
        data = args.data or SHARED_DATA / comp.dataset
    if not (data / "dataset.json").is_file():
        sys.exit(f"{comp.name}: dataset {data} is absent (needs ../shared/data beside the repository, or --data)")
    if comp.name == "cycle_noisy":
        data = make_noisy_copy(data, runs / comp.name / "data_noisy30", fraction=0.3, fold=args.fold, seed=0)
    return data


def run_comparison(comp: Comparison, args: argparse.Namespace, runs: Path, results: Path, cmd: str) -> Path:
    from focusseg.devices import resolve_device
    from focusseg.io.atomic import save_json
    from focusseg.preprocessing import preprocess_dataset
    from focusseg.workflows.plan import plan_dataset
    from focusseg.workflows.train import run_training

    data = dataset_for(comp, args, runs)
    root = runs / comp.name
    root.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    plan_file = root / "base_plan.json"
    if not plan_file.is_file():
        save_json(plan_dataset(data, device.type, None, root / "fingerprint.json", progress=False), plan_file)
    t0 = time.perf_counter()
    preprocess_dataset(data, json.loads(plan_file.read_text()), root / "preprocessed", progress=False)
    print(f"[{comp.name}] preprocessed in {time.perf_counter() - t0:.1f} s", flush=True)
    common = stack(SMOKE if args.smoke else {}, comp.common)
    common = stack(common, schedule(args.iterations, args.iters_per_epoch) if args.minutes is None else
                   {"training": {"iterations_per_epoch": args.iters_per_epoch}})
    arms = {a: o for a, o in comp.arms.items() if args.arms is None or a in args.arms}
    if not arms:
        sys.exit(f"{comp.name}: none of the arms {args.arms} exists (arms: {', '.join(comp.arms)})")
    out: dict[str, list[dict]] = {}
    for arm, arm_over in arms.items():
        for seed in args.seeds:
            run_dir = root / arm / f"seed{seed}"
            over = stack(stack(common, arm_over), {"training": {"seed": seed}})
            settings = {"data": str(data), "fold": args.fold, "overrides": over, "minutes": args.minutes,
                        "device": device.type}
            marker = run_dir / "evidence_settings.json"
            if marker.is_file() and json.loads(marker.read_text()) != settings:
                sys.exit(f"{run_dir} was trained with other settings; delete it or pass another --runs")
            if not (run_dir / "summary.json").is_file():
                run_dir.mkdir(parents=True, exist_ok=True)
                save_json(settings, marker)
                t1 = time.perf_counter()
                run_training(data, run_dir, fold=args.fold, overrides=over, time_budget_min=args.minutes,
                             device=str(device), resume=(run_dir / "checkpoint_latest.pt").is_file(),
                             preprocessed_dir=root / "preprocessed", plan_path=plan_file, progress=False)
                print(f"[{comp.name}] {arm} seed {seed}: {time.perf_counter() - t1:.1f} s", flush=True)
            out.setdefault(arm, []).append(read_run(run_dir, lesion_labels(data)))
    return write_report(comp, args, data, root, out, results, cmd)


def lesion_labels(data: Path) -> list[int]:
    """Labels whose name contains "lesion" (every foreground label when none does)."""
    labels = json.loads((data / "dataset.json").read_text())["labels"]
    found = [int(v) for k, v in labels.items() if "lesion" in k.lower()]
    return found or [int(v) for v in labels.values() if int(v) > 0]


def write_report(comp: Comparison, args: argparse.Namespace, data: Path, root: Path, out: dict[str, list[dict]],
                 results: Path, cmd: str) -> Path:
    from machine import machine_line

    arms, base = list(out), comp.baseline if comp.baseline in out else next(iter(out))
    first = root / arms[0] / f"seed{args.seeds[0]}"
    plan = json.loads((first / "plan.json").read_text())
    split = json.loads((first / "splits_final.json").read_text() if (first / "splits_final.json").is_file()
                       else (data / "splits_final.json").read_text())[args.fold]
    names = {str(v): k for k, v in plan["labels"].items()}
    labels = sorted({k for runs in out.values() for r in runs for k in r["dice"]}, key=int)
    tr = plan["training"]
    sched = (f"{args.minutes:g}-minute budget per arm" if args.minutes is not None else
             f"{tr['max_epochs'] * tr['iterations_per_epoch']} iterations per arm ({tr['max_epochs']} epoch(s) x "
             f"{tr['iterations_per_epoch']}, validation after each)")
    smoke = " [SMOKE: tiny phantom data, numbers meaningless]" * args.smoke
    lines = [f"## Evidence: {comp.name}{args.tag} (issue 7){smoke}",
             "", f"- Claim tested: {comp.claim}", f"- Command: `{cmd}`", f"- Machine: {machine_line()}",
             f"- Data: `{data.name}`, fold {args.fold}: {len(split['train'])} training / {len(split['val'])} "
             f"validation cases; seeds {args.seeds}; {sched}.",
             f"- Shared plan: patch {plan['patch_size']}, batch {plan['batch_size']}, network "
             f"{plan['network']['name']}, amp {tr['amp']}, augmentation {tr['augmentation']}, optimizer "
             f"{tr['optimizer'].get('name')} lr {tr['optimizer'].get('lr')}, loss {json.dumps(tr['loss'])}, "
             f"sampler {json.dumps(tr['sampler'])}, foreground oversampling {tr['foreground_oversampling']}."]
    if comp.name == "cycle_noisy":
        man = json.loads((data / "corruption.json").read_text())
        kinds = [man["corrupted"][c] for c in sorted(man["corrupted"])]
        ch = list(man["changed_voxels_per_foreground_voxel"].values())
        lines.append(f"- Noise: {len(kinds)} of {man['n_train']} training labels corrupted (seed 0): "
                     + ", ".join(f"{k} {kinds.count(k)}" for k in dict.fromkeys(kinds))
                     + f" (binary, 2 iterations; changed voxels per foreground voxel {fmt(ch)}); validation labels "
                     "untouched.")
    lines.append("- Arms (plan overrides on top of the shared plan): "
                 + "; ".join(f"`{a}` = `{json.dumps(comp.arms[a])}`" for a in arms))
    lines += ["- Final validation = the fold's held-out cases predicted from the raw images with each run's best "
              "checkpoint and scored in their original geometry; 'best val' = best mean Dice of the in-training "
              "validations (preprocessed grid, no TTA).", ""]
    lesion = comp.name == "blob"
    head = ["arm", "seeds", "final mean Dice", *[f"Dice {lab} ({names.get(lab, '?')})" for lab in labels],
            "best val Dice", *(["lesion F1", "lesion Dice"] if lesion else []),
            *(["epochs with class weights ≠ 1"] if comp.name.startswith("class_weights") else []),
            "iterations", "train s"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" + " ---: |" * (len(head) - 1)]
    for a in arms:
        rs = out[a]
        cells = [f"`{a}`", str(len(rs)), fmt([r["mean_dice"] for r in rs]),
                 *[fmt([r["dice"].get(lab, float("nan")) for r in rs]) for lab in labels],
                 fmt([r["best_val"] for r in rs]),
                 *([fmt([r["lesion_f1"] for r in rs]), fmt([r["lesion_dice"] for r in rs])] if lesion else []),
                 *([" / ".join(str(r["weighted_epochs"]) for r in rs)] if comp.name.startswith("class_weights")
                   else []),
                 f"{mean_sd([r['iterations'] for r in rs])[0]:.0f}", f"{mean_sd([r['train_s'] for r in rs])[0]:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    curves = {a: curve_mean([r["curve"] for r in out[a]]) for a in arms}
    if comp.name == "focused_practice":
        lines += ["", *curve_table(curves, out)]
    lines += ["", "Verdict (automatic; a difference counts as resolved only when it exceeds the larger of the two "
              "arms' seed sd):", ""]
    lines += [f"- {v}" for v in verdicts(comp, base, out, labels, names)]
    png = results / f"evidence_{comp.name}{args.tag}.png"
    plot(comp, out, curves, labels, names, png)
    lines += ["", f"![{comp.name}](benchmarks/results/{png.name})", ""]
    results.mkdir(parents=True, exist_ok=True)
    md = results / f"evidence_{comp.name}{args.tag}.md"
    md.write_text("\n".join(lines))
    print("\n".join(lines), flush=True)
    return md


def curve_table(curves: dict, out: dict) -> list[str]:
    """Mean validation Dice at (up to) four iteration checkpoints shared by every arm, and the curve mean."""
    common = sorted(set.intersection(*[set(c[0]) for c in curves.values()]))
    picks = sorted({common[max(0, round(q * len(common)) - 1)] for q in (0.25, 0.5, 0.75, 1.0)}) if common else []
    lines = ["| arm | " + " | ".join(f"val Dice @ it {i}" for i in picks) + " | mean over the curve |",
             "|" + " --- |" + " ---: |" * (len(picks) + 1)]
    for a, runs in out.items():
        cells = [fmt([dict(r["curve"]).get(i, float("nan")) for r in runs]) for i in picks]
        auc = [float(sum(v for i, v in r["curve"] if i in common) / max(1, len(common))) for r in runs]
        lines.append(f"| `{a}` | " + " | ".join(cells) + f" | {fmt(auc)} |")
    return lines


def verdicts(comp: Comparison, base: str, out: dict, labels: list[str], names: dict) -> list[str]:
    res = []
    worst = min(labels, key=lambda k: mean_sd([r["dice"].get(k) for r in out[base]])[0]) if labels else None

    def get(key: str, arm: str) -> list[float]:
        return [r[key] for r in out[arm]]

    for a in [x for x in out if x != base]:
        if comp.name == "blob":
            res += [verdict(t, base, get(k, base), a, get(k, a)) for k, t in
                    (("lesion_f1", "lesion-wise F1"), ("lesion_dice", "lesion Dice"), ("mean_dice", "final mean Dice"))]
        elif comp.name == "focused_practice":
            common = sorted(set.intersection(*[{i for i, _ in r["curve"]} for x in (base, a) for r in out[x]]))
            for i in common[:1] + common[-1:] if len(common) > 1 else common:
                res.append(verdict(f"val Dice at iteration {i}", base, [dict(r["curve"])[i] for r in out[base]], a,
                                   [dict(r["curve"])[i] for r in out[a]]))
        else:
            res.append(verdict("final mean Dice", base, get("mean_dice", base), a, get("mean_dice", a)))
        if comp.name in ("class_weights", "class_weights_long", "topk", "cycle_noisy") and worst is not None:
            res.append(verdict(f"worst class ({worst}, {names.get(worst, '?')})", base,
                               [r["dice"].get(worst) for r in out[base]], a, [r["dice"].get(worst) for r in out[a]]))
    return res


def plot(comp: Comparison, out: dict, curves: dict, labels: list[str], names: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [("mean_dice", "mean Dice")] + [(lab, f"{lab} {names.get(lab, '')}") for lab in labels]
    if comp.name == "blob":
        keys += [("lesion_f1", "lesion F1"), ("lesion_dice", "lesion Dice")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(out)
    for j, (a, runs) in enumerate(out.items()):
        stats = [mean_sd([r["dice"].get(k) if k in labels else r.get(k) for r in runs]) for k, _ in keys]
        ax1.bar(np.arange(len(keys)) + j * width, [m for m, _ in stats], width, label=a,
                yerr=[0 if not np.isfinite(s) else s for _, s in stats], capsize=3)
        its, m, sd = curves[a]
        ax2.plot(its, m, marker="o", ms=3, label=a)
        if len(its) and np.isfinite(sd).all():
            ax2.fill_between(its, m - sd, m + sd, alpha=0.2)
    ax1.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [t for _, t in keys])
    ax1.set(ylabel="final validation (mean ± sd over seeds)", ylim=(0, 1), title=comp.name)
    ax2.set(xlabel="iteration", ylabel="in-training validation mean Dice", title="validation Dice per iteration")
    for ax in (ax1, ax2):
        ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
