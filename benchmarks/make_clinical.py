"""Write a clinical-shape dataset: hippocampus cases pasted into large CT-like fields in mixed orientations.

    python benchmarks/make_clinical.py --out DIR [--source DIR] [--cases N] [--seed S]

--source defaults to $ACTIVESEG_HIPPOCAMPUS, else ../shared/data/hippocampus beside the checkout. Prints one
JSON line: {"out": ..., "cases": N, "seconds": ..., "orientations": {code: count}, "oblique": n}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

from activeseg.data.clinical import make_clinical_dataset


def main() -> None:
    default_source = os.environ.get(
        "ACTIVESEG_HIPPOCAMPUS", str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hippocampus")
    )
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path(default_source), help="MSD-layout hippocampus folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder (imagesTr/labelsTr must be empty)")
    parser.add_argument("--cases", type=int, default=None, help="first N source cases (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    out = make_clinical_dataset(args.source, args.out, n_cases=args.cases, seed=args.seed)
    drawn = json.loads((out / "dataset.json").read_text(encoding="utf-8"))["clinical"]
    summary = {
        "out": str(out),
        "cases": len(drawn),
        "seconds": round(time.perf_counter() - start, 2),
        "orientations": dict(sorted(Counter(d["orientation"] for d in drawn.values()).items())),
        "oblique": sum(d["oblique_degrees"] != 0.0 for d in drawn.values()),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
