"""Paired FID differences and verdicts of an evaluation, recomputed from its saved features.

    python tools/paired.py OUTPUT_PATH FID_STAT [--resamples 100]

OUTPUT_PATH is an ``eval.py`` report folder made with ``--config.sample.save_features=True``
(its ``report.json`` and ``features/<pair>.npy``); FID_STAT the reference statistics it used.
Prints each row's FID from the features and the paired table and verdict lines as report.txt
has them, under the rules of this version (``libs/evaluation/paired.py``): the same bootstrap
resamples, so an unchanged rule gives report.txt's numbers again.
"""
import argparse
import dataclasses
import json
import os
from typing import Optional, Sequence

import numpy as np


def paired_report(output_path: str, fid_stat: str, resamples: int = 100) -> list:
    """The report's rows (``PolicyResult``) with FID and the paired columns recomputed from features/."""
    from libs.evaluation.fid import frechet_distance, load_statistics, statistics_from_features
    from libs.evaluation.fid_uncertainty import bootstrap_indices, resampled_fids
    from libs.evaluation.paired import add_paired_columns
    from libs.evaluation.report import PolicyResult

    report = os.path.join(output_path, "report.json")
    if not os.path.isfile(report):
        raise FileNotFoundError(f"'{report}' does not exist: give the --output_path of an eval.py run")
    ref = load_statistics(fid_stat)
    names = {f.name for f in dataclasses.fields(PolicyResult)}  # the paired columns are recomputed
    with open(report) as f:
        results = [PolicyResult(**{k: v for k, v in row.items() if k in names}) for row in json.load(f)]
    boots = []
    for r in results:
        path = os.path.join(output_path, "features", f"{r.slug}.npy")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"'{path}' does not exist: run eval.py with --config.sample.save_features=True")
        x = np.load(path).astype(np.float64)
        r.fid = frechet_distance(*statistics_from_features(x), *ref)
        boots.append(resampled_fids(x, *ref, bootstrap_indices(len(x), resamples)) if resamples > 1 else None)
    add_paired_columns(results, boots)
    return results


def main(argv: Optional[Sequence[str]] = None) -> list:
    parser = argparse.ArgumentParser(description="Paired FID differences and verdicts of an eval.py report folder, "
                                                 "recomputed from its saved features.")
    parser.add_argument("output_path", help="an eval.py --output_path made with --config.sample.save_features=True")
    parser.add_argument("fid_stat", help="the reference statistics (.npz) the evaluation used")
    parser.add_argument("--resamples", type=int, default=100, help="bootstrap resamples (eval.py's default: 100)")
    args = parser.parse_args(argv)
    from libs.evaluation.report import format_paired

    results = paired_report(args.output_path, args.fid_stat, args.resamples)
    for r in results:
        print(f"{r.sample_steps:>5} {r.policy} FID {r.fid:.3f}")
    print("\n".join(format_paired(results)))
    return results


if __name__ == "__main__":
    from libs.run.errors import guarded
    guarded(main)()
