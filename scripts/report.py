"""Write the Phase 2 diagnostics report (report.md and figures/*.png), for a run or for any CJE dataset file.

    python scripts/report.py --phase2-dir data/runs/local/phase2
    python scripts/report.py --cje-dataset ../shared/arena/reference_cje_dataset_sample.jsonl --clone clone --out /tmp/reference_report
"""

import argparse
from pathlib import Path

from arena10k import report
from arena10k.config import load_config
from arena10k.pipeline import user_errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--phase2-dir", type=Path, help="a run's phase2 directory; the report is written into it")
    source.add_argument("--cje-dataset", type=Path, help="a CJE logged-rows file (fresh_draws/ beside it is read too)")
    parser.add_argument("--out", type=Path, help="where to write the report (default: the phase2 directory)")
    parser.add_argument("--config", type=Path, help="the run's config, for token prices (dataset_info.json records none)")
    parser.add_argument("--clone", action="append", default=[], metavar="POLICY",
                        help="with --cje-dataset: a target policy that is the base policy under another name, whose "
                             "weights must all be 1 (repeatable; a run's own clones are known from its config)")
    args = parser.parse_args()
    with user_errors():
        if args.phase2_dir:
            data = report.phase2_input(args.phase2_dir, load_config(args.config) if args.config else None)
        elif args.out is None:
            parser.error("--cje-dataset needs --out")
        else:
            data = report.cje_dataset_input(args.cje_dataset, tuple(args.clone))
        print(f"report: {report.write_report(data, args.out or args.phase2_dir)}")


if __name__ == "__main__":
    main()
