#!/usr/bin/env python3
"""Reruns analysis configs into a scratch folder and compares what they write with the
committed results/, number by number. For a refactor: "every committed result regenerates
from its config with identical numbers".

    python3 scripts/regenerate_results.py --scratch /tmp/regen [--shard-2d 1/10] [CONFIG ...]
    python3 scripts/regenerate_results.py --scratch /tmp/new --reference /tmp/old --no-run

Each config's output paths (out, figures_dir, export_hf, predictions) are moved under
--scratch (export_hf paths are shared, so a trained-head landscape reads the head trained by
this run); 2-D landscapes can be limited to one shard of their grid. Then every Parquet file
and summary.json of the run is compared with the committed one: per numeric column the largest
absolute difference, timings and other run-dependent columns left out. Needs polars (pip).
"""
import argparse
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
# Columns and keys that measure the run, not the result.
TIMING = {"seconds", "peak_rss_mib", "version", "sift_lab_version", "model_revision"}


def scratch_config(config: Path, scratch: Path, shard_2d: str | None) -> tuple[Path, Path]:
    doc = tomllib.loads(config.read_text())
    args = doc["args"]
    committed = Path(args.get("out") or Path(args["predictions"]).parent)
    for key in ("out", "figures_dir", "export_hf"):
        if key in args:
            args[key] = str(scratch / args[key])
    if "predictions" in args:
        args["predictions"] = str(scratch / args["predictions"])
    if "head_from" in args:
        args["head_from"] = str(scratch / args["head_from"])
    if doc["command"] == "landscape" and args.get("dims") == 2 and shard_2d:
        args["shard"] = shard_2d
    lines = [f'command = "{doc["command"]}"', "[args]"]
    for key, value in args.items():
        lines.append(f"{key} = {json.dumps(value) if not isinstance(value, bool) else str(value).lower()}")
    path = scratch / "configs" / config.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path, committed


def compare_frames(new: pl.DataFrame, old: pl.DataFrame, key: list[str]) -> tuple[int, float, list[str]]:
    """Rows compared, the largest |difference| over numeric columns, and the columns that differ
    in kind (missing, or non-numeric values that differ)."""
    problems = []
    if key:
        old = old.join(new.select(key), on=key, how="semi").sort(key)
        new = new.join(old.select(key), on=key, how="semi").sort(key)
    if new.height != old.height or new.height == 0:
        return new.height, float("inf"), [f"rows {new.height} vs {old.height}"]
    worst = 0.0
    for name in old.columns:
        if name in TIMING:
            continue
        if name not in new.columns:
            problems.append(f"column {name} missing")
            continue
        a, b = new[name], old[name]
        if a.dtype.is_numeric() and b.dtype.is_numeric():
            d = (a.cast(pl.Float64) - b.cast(pl.Float64)).abs()
            both_null = a.is_null() & b.is_null()
            nan_equal = a.cast(pl.Float64).is_nan() & b.cast(pl.Float64).is_nan()
            d = d.filter(~(both_null | nan_equal))
            if d.null_count() > 0:
                problems.append(f"{name}: nulls differ")
            m = d.max()
            worst = max(worst, float(m) if m is not None else 0.0)
        elif not a.equals(b):
            problems.append(f"{name} differs")
    return new.height, worst, problems


def numbers(value, prefix=""):
    """Flattens a JSON value into {path: number}, leaving out timings and configuration."""
    out = {}
    if isinstance(value, dict):
        for k, v in value.items():
            if k in TIMING or k == "config":
                continue
            out.update(numbers(v, f"{prefix}{k}."))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.update(numbers(v, f"{prefix}{i}."))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix.rstrip(".")] = float(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument("--shard-2d", default=None, help="e.g. 1/10: recompute one shard of each 2-D grid")
    parser.add_argument("--binary", type=Path, default=ROOT / "target/release/sift-lab")
    parser.add_argument("--no-run", action="store_true", help="only compare what --scratch holds")
    parser.add_argument("--reference", type=Path, default=ROOT,
                        help="compare with this root's results/ instead of the committed ones (e.g. another --scratch)")
    parser.add_argument("configs", nargs="*", type=Path)
    args = parser.parse_args()
    configs = args.configs or sorted((ROOT / "analyses").glob("*.toml"))
    # Ablation grids (`item = ...`, run by `sift-lab ablate`) take hours; they resume, not rerun.
    configs = [c for c in configs if "command" in tomllib.loads(c.read_text())]
    # Head-only runs first: trained-head landscapes read their exports.
    configs.sort(key=lambda c: (0 if c.name.startswith("head-") else 1, c.name))
    failed = False
    for config in configs:
        path, committed = scratch_config(config, args.scratch, args.shard_2d)
        new_dir = args.scratch / committed
        if not args.no_run:
            run = subprocess.run([str(args.binary), "run", str(path)], cwd=ROOT, capture_output=True, text=True)
            if run.returncode != 0:
                print(f"{config.name}: FAILED\n{run.stderr[-2000:]}")
                failed = True
                continue
        old_dir = args.reference / committed
        for old in sorted(old_dir.glob("*.parquet")):
            new = new_dir / old.name
            if not new.exists():
                shards = sorted(new_dir.glob(old.stem + ".shard-*.parquet"))
                new = shards[0] if shards else new
            if not new.exists():
                print(f"{config.name}: {old.name} not written")
                failed = True
                continue
            new_df, old_df = pl.read_parquet(new), pl.read_parquet(old)
            key = [c for c in ("point", "kind", "epoch", "step", "example_index") if c in old_df.columns]
            if {"model", "tensor"} <= set(old_df.columns):
                key = [c for c in ("model", "tensor", "range", "bin", "x_percent", "batch", "scope") if c in old_df.columns]
            rows, worst, problems = compare_frames(new_df, old_df, key)
            status = "identical" if worst == 0.0 and not problems else f"max |diff| {worst:.3g}"
            print(f"{config.name}: {committed}/{old.name}: {rows} rows, {status}" + (f" ({'; '.join(problems)})" if problems else ""))
        summary_old, summary_new = old_dir / "summary.json", new_dir / "summary.json"
        if summary_old.exists() and summary_new.exists() and not args.shard_2d or (summary_new.exists() and "2d" not in config.name):
            a = numbers(json.loads(summary_new.read_text()))
            b = numbers(json.loads(summary_old.read_text()))
            keys = sorted(set(a) | set(b))
            diffs = [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]
            worst = max((abs(x - y) for _, x, y in diffs if x is not None and y is not None), default=0.0)
            missing = [k for k, x, y in diffs if x is None or y is None]
            print(f"{config.name}: {committed}/summary.json: {len(keys)} numbers, "
                  + ("identical" if not diffs else f"{len(diffs)} differ, max |diff| {worst:.3g}")
                  + (f", only in one: {missing[:5]}" if missing else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
