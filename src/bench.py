"""Throughput: of the model on synthetic batches, or of every stage of the real pipeline.

    python -m src.bench --config configs/resnext101.yaml [--steps 30] [section.key=value ...]
    python -m src.bench --stages [--photos 2000] [--batches 8] [--folds 2] [--views identity hflip] ...

Without --stages: the configured model with its freezing, optimizer, AMP and channels_last
settings, images per second for a training step and for inference, and peak accelerator
memory; appends a JSON line to outputs/bench/results.jsonl.

With --stages: builds a set of 500x375 JPEGs and measures, as images/s and as ratios, the data
pipeline with and without the image cache, a training epoch on photos against in-memory tensors,
the frozen recipe against a fully trainable model, the ensemble's inference pass against pure
forwards, the FLOP/s achieved against the matmul peak, and src.train's epoch against timm's
train.py data path (see src/analysis/bench_stages.py); writes benchmarks/results/<device>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from src.core.cli import command_parser, parse_args, run_cli
from src.core.config import load_config
from src.core.utils import atomic_write_text


def _timed(cfg):
    """A step takes as long at any rate: optim.lr=find is timed at 1e-3, without a sweep."""
    return cfg.with_lr(1e-3) if cfg.optim.lr == "find" else cfg


def stages(args) -> None:
    from src.analysis.bench_stages import make_photos, run_stages  # here: --help imports nothing heavy

    photos = make_photos(Path(args.work) / "photos", args.photos)
    common = [f"data.dir={photos}", "data.layout=imagefolder", "data.n_folds=5", "data.check_images=false",
              f"experiment.output_dir={args.work}", "experiment.name=bench", "wandb.mode=disabled",
              f"train.limit_batches={args.batches}", "model.pretrained=false"]
    cfg = load_config(args.config, [*common, *args.overrides])
    full = load_config(args.config, [*common, *args.overrides, "model.freeze_before=null", "model.freeze_stages=null"])
    result = run_stages(_timed(cfg), _timed(full), photos, args.folds, args.views, args.test_images)
    result["command"] = "python -m src.bench " + " ".join(args.raw)
    print(json.dumps(result, indent=2))
    for line in result["warnings"]:
        print(f"WARNING: {line}")
    out = Path(args.results) / f"{result['device']}{'-' + args.tag if args.tag else ''}.json"
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = command_parser(__doc__)
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after 5 warmup steps)")
    parser.add_argument("--out", default="outputs/bench/results.jsonl", help="JSON-lines file to append to")
    parser.add_argument("--stages", action="store_true", help="benchmark every stage of the pipeline on real photos")
    parser.add_argument("--photos", type=int, default=2000, help="--stages: training (and test) photos to make")
    parser.add_argument("--batches", type=int, default=16, help="--stages: batches per timed training epoch")
    parser.add_argument("--folds", type=int, default=2, help="--stages: fold models in the ensemble pass")
    parser.add_argument("--views", nargs="+", default=["identity", "hflip"], help="--stages: TTA views")
    parser.add_argument("--test-images", type=int, default=512, help="--stages: test photos in the ensemble pass")
    parser.add_argument("--work", default="outputs/bench", help="--stages: folder for photos, cache and folds")
    parser.add_argument("--results", default="benchmarks/results", help="--stages: folder of <device>[-tag].json")
    parser.add_argument("--tag", default="", help="--stages: suffix of the results file (another model, say)")
    args = parse_args(parser, argv)
    if args.stages:
        args.raw = list(argv if argv is not None else sys.argv[1:])
        return stages(args)
    cfg = _timed(load_config(args.config, args.overrides))
    from src.analysis.model_bench import bench, head_classes, meta_spec
    from src.ensembling.write_guard import check_writable

    check_writable(args.out, cfg, "--out", "bench", safe="outputs/bench/")

    n_classes, why = head_classes(cfg)
    print(f"head: {n_classes} outputs ({why})")
    result = bench(cfg, args.steps, n_classes=n_classes, meta=meta_spec(cfg))
    print(json.dumps(result))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":


    run_cli(main)
