"""Run the malformed-input corpus (tests/reliability/corpus.py) outside pytest and count what the trust rules
promise: inputs tried, refused cleanly (non-zero exit, one error line naming the file, no traceback), coped with
(exit 0 where focusseg must work), tracebacks, unexpected errors, inputs modified, files written outside the
output folder. Then run the crash-consistency tests (SIGKILL + rerun/resume) and report their outcome.

    .venv/bin/python benchmarks/bench_reliability.py --write     # -> benchmarks/results/reliability.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))


def run_corpus() -> tuple[list[dict], float]:
    import torch
    from focusseg_testdata import write_tiny_dataset
    from reliability.conftest import TINY_PLAN, Sandbox, peak_rss, snapshot
    from reliability.corpora import CORPUS, GROUP

    from focusseg.cli import main
    from focusseg.workflows.train import run_training

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "templates"
        data = write_tiny_dataset(base / "DataTs", n_cases=5, with_test=True)
        run_training(data, base / "run", fold=0, overrides=TINY_PLAN, progress=False, device="cpu")
        templates = {"_base": base, "_data_ts": data, "_run": base / "run"}
        for i, name in enumerate(sorted(CORPUS)):
            command, build = CORPUS[name]
            root = Path(tmp) / f"case{i:03d}"
            (root / "in").mkdir(parents=True)
            (root / "cwd").mkdir()
            sb = Sandbox(root, templates)
            entry = build(sb)
            allowed = [sb.out, *entry.outputs]
            before = snapshot(root, allowed)
            out, err = io.StringIO(), io.StringIO()
            cwd = os.getcwd()
            os.chdir(root / "cwd")
            t1 = time.perf_counter()
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), peak_rss() as mem:
                    code = main([str(a) for a in entry.argv])
            finally:
                os.chdir(cwd)
            seconds_entry = time.perf_counter() - t1
            after = snapshot(root, allowed)
            inputs = {k for k in before if not k.startswith("cwd")}
            modified = sorted(k for k in inputs if before.get(k) != after.get(k))
            outside = sorted(k for k in set(after) - set(before))
            text = out.getvalue() + err.getvalue()
            lines = [x for x in err.getvalue().splitlines() if x.startswith("error:")]
            named = entry.culprit is None or any(entry.culprit in x for x in lines)
            extra_ok = True
            if entry.after is not None:
                try:
                    entry.after()
                except AssertionError:
                    extra_ok = False
            if entry.refuse:
                clean = code not in (0, 3) and 1 <= len(lines) <= entry.max_error_lines and named
            else:
                clean = code == 0
            within = mem["added_mb"] <= entry.max_rss_mb and seconds_entry <= entry.max_seconds
            rows.append({"name": name, "command": command, "refuse": entry.refuse, "code": code,
                         "group": GROUP[name], "rss_mb": mem["added_mb"], "seconds": seconds_entry,
                         "within": within,
                         "clean": clean and extra_ok and within and "Traceback" not in text and not modified
                         and not outside,
                         "traceback": "Traceback" in text, "unexpected": code == 3, "modified": modified,
                         "outside": outside, "first_line": (lines or [""])[0].replace(str(root), "…")[:160]})
    return rows, time.perf_counter() - t0


def run_kill_tests() -> str:
    tests = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests" / "reliability").glob("test_crash_*.py"))
    if not tests:
        return "no crash-consistency tests found"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow", *tests]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    tail = [x for x in res.stdout.splitlines() if " passed" in x or " failed" in x]
    return f"`{' '.join(['pytest', '-m', 'slow or not slow', *tests])}`: {tail[-1] if tail else res.stdout[-300:]} " \
           f"({time.perf_counter() - t0:.0f} s)"


def report(rows: list[dict], seconds: float, kills: str | None) -> str:
    from machine import machine_line

    by_cmd = Counter(r["command"] for r in rows)

    def row(label: str, rs: list[dict]) -> str:
        ref = [r for r in rs if r["refuse"]]
        cop = [r for r in rs if not r["refuse"]]
        worst = max(rs, key=lambda r: r["rss_mb"])
        slow = max(rs, key=lambda r: r["seconds"])
        return (f"| {label} | {len(rs)} | {sum(r['clean'] for r in ref)} of {len(ref)} | "
                f"{sum(r['clean'] for r in cop)} of {len(cop)} | {sum(r['traceback'] for r in rs)} | "
                f"{sum(r['unexpected'] for r in rs)} | {sum(bool(r['modified']) for r in rs)} | "
                f"{sum(bool(r['outside']) for r in rs)} | +{worst['rss_mb']:.0f} MiB (`{worst['name']}`) | "
                f"{slow['seconds']:.1f} s (`{slow['name']}`) |")

    first = [r for r in rows if r["group"] == "corpus"]
    shared = [r for r in rows if r["group"] != "corpus"]
    by_group = Counter(r["group"].removeprefix("corpus_shared_") for r in shared)
    lines = [
        "## Trust: malformed-input corpus and crash consistency",
        "",
        "- Command: `.venv/bin/python benchmarks/bench_reliability.py --write` (the same corpus runs in `make test` as "
        "`tests/reliability/test_corpus.py`; the kill tests in `make test-slow`)",
        f"- Machine: {machine_line()}; corpus run took {seconds:.0f} s",
        f"- Entries per command: {', '.join(f'{k} {v}' for k, v in sorted(by_cmd.items()))}",
        f"- Files others made (model bundles, shared run / cross-validation / prediction folders, probability files, "
        f"JSON, DICOM), entries per corpus module: {', '.join(f'{k} {v}' for k, v in sorted(by_group.items()))}",
        "- Peak RSS: the resident memory an entry's command adds (the kernel's high-water mark, reset before each "
        "entry through /proc/self/clear_refs); each entry also has its own bound, checked in the test.",
        "",
        "| corpus | inputs tried | refused cleanly | coped with (exit 0) | tracebacks | unexpected errors "
        "| inputs modified | outside writes or deletes | peak RSS of the worst entry | slowest entry |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        row("datasets, runs, predictions", first),
        *([row("files others made", shared)] if shared else []),
        row("**all**", rows),
        "",
    ]
    bad = [r for r in rows if not r["clean"]]
    if bad:
        lines += ["Entries that did not pass:", ""] + [f"- `{r['name']}` ({r['command']}): exit {r['code']}, "
                                                       f"{r['first_line']!r}" for r in bad] + [""]
    lines += ["<details><summary>every entry and its one line</summary>", "",
              "| entry | corpus | command | exit | peak RSS added | first line |",
              "| --- | --- | --- | ---: | ---: | --- |"]
    for r in rows:
        text = r["first_line"].replace("|", "\\|")
        lines.append(f"| {r['name']} | {r['group'].removeprefix('corpus_shared_')} | {r['command']} | {r['code']} | "
                     f"{r['rss_mb']:.0f} MiB | {text} |")
    lines += ["", "</details>", ""]
    if kills:
        lines += ["Crash consistency: SIGKILL at seeded random points (and at every kind of write: before and after an "
                  "atomic rename, inside an epoch, half-way through a checkpoint), then rerun or `--resume`; the "
                  "result must equal an uninterrupted run.", "",
                  "| command | kills in `make test` | kills in `make test-slow` | equal to uninterrupted |",
                  "| --- | ---: | ---: | --- |",
                  "| preprocess | 2 | 12 stores (+6 second kills while resuming) | every array, location, property |",
                  "| train (CPU) | 2 | 12 random + 1 after checkpoint and log line | identical weights, log records |",
                  "| predict | 2 | 12 random + before/after every rename | byte-identical output files |",
                  "| evaluate (2 workers, process group killed) | 2 | 12 random | identical metrics.csv |",
                  "", f"Measured: {kills}", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/reliability.md")
    ap.add_argument("--no-kills", action="store_true",
                    help="skip the crash-consistency tests (keep the last measured line of the report)")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    rows, seconds = run_corpus()
    kills = None if args.no_kills else run_kill_tests()
    previous = HERE / "results" / "reliability.md"
    if kills is None and previous.is_file():  # keep the last measured kill-test line
        measured = [x for x in previous.read_text().splitlines() if x.startswith("Measured: ")]
        kept = measured[-1][len("Measured: "):].replace(" (from the previous full run)", "") if measured else None
        kills = kept + " (from the previous full run)" if kept else None
    text = report(rows, seconds, kills)
    print(text)
    if args.write:
        (HERE / "results" / "reliability.md").write_text(text)


if __name__ == "__main__":
    main()
