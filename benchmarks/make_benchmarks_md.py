"""Assemble BENCHMARKS.md from the per-part reports in benchmarks/results/*.md (each written by its script).

    .venv/bin/python benchmarks/make_benchmarks_md.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["train_hippocampus", "time_to_dice", "train_hippocampus_thin", "train_hippocampus_refit", "metrics",
         "losses", "nets", "inference_peers", "nnunet_agreement", "nnunet_three_ways", "nnunet_budget",
         "train_hippocampus_nnunet_plans", "train_hippocampus_nnunet_plans_fp", "train_hippocampus_resenc_m",
         "roofline", "sliding_window_accel", "evaluate_process", "predict_memory", "postprocessing", "inference",
         "augment", "strategies", "recipes_realdata", "evidence_focused_practice", "evidence_focused_practice_long",
         "evidence_cycle_noisy", "evidence_blob", "evidence_blob_long", "evidence_topk", "evidence_class_weights",
         "evidence_class_weights_long"]

HEADER = """# focusseg benchmarks

Every figure below was measured by the script named beside it (under `benchmarks/`), which anyone can rerun;
each section gives its command, machine and date. Speed is a ratio against a peer measured in the same run;
memory is peak RSS. The development machines have 2 CPU cores and no GPU, shared with other work while some of
these ran: absolute times are upper bounds, ratios are what to compare.
"""


def main() -> None:
    parts = [HEADER]
    files = {p.stem: p for p in sorted((HERE / "results").glob("*.md"))}
    for name in ORDER + sorted(set(files) - set(ORDER)):
        if name in files:
            parts.append(files[name].read_text().strip() + "\n")
    (HERE.parent / "BENCHMARKS.md").write_text("\n".join(parts))
    print(f"BENCHMARKS.md: {len(parts) - 1} sections")


if __name__ == "__main__":
    main()
