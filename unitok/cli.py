"""The ``unitok`` command line. Each subcommand is a thin shell over ``unitok.recipes`` and the layers.

    unitok data build world --split train --n 2000 --out data/world/train
    unitok data import coco --instances ann.json --images imgs/ --out data/mycoco/train
    unitok data inspect|stats DIR ;  unitok data show DIR --index 3 --out rec.png
    unitok tokenizers train [--what text] --config configs/tiny.yaml
    unitok tokenizers train --what image|dense --out tokenizers/image_vq [--steps N ...]
    unitok tasks list ;  unitok tasks check [FILE ...]
    unitok train --config configs/tiny.yaml --out runs/tiny
    unitok eval --checkpoint runs/tiny/checkpoint [--tasks caption detection] [--split val] [--no-blind]
    unitok predict --image scene.png --prompt "detect the shapes." [--checkpoint DIR]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np


def _value(text: str):
    """Parse ``--set key=value`` values as YAML scalars (numbers, booleans, lists)."""
    import yaml

    return yaml.safe_load(text)


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise SystemExit(f"expected KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = _value(value)
    return out


# ---------------------------------------------------------------------- data
def cmd_data_build(args) -> None:
    from .recipes import build_world_store

    path = build_world_store(args.kind, args.split, args.n, args.out, seed=args.seed, size=args.size)
    print(f"wrote {args.n} {args.kind} records ({args.split}) to {path}")


def cmd_data_import(args) -> None:
    from .data.importers import import_dataset

    kwargs = {k: v for k, v in vars(args).items() if k in _IMPORT_ARGS and v is not None}
    report = import_dataset(args.kind, out=args.out, skip_bad=args.skip_bad, **kwargs)
    print(report.summary())


_IMPORT_ARGS = ("instances", "images", "captions", "questions", "annotations", "refs", "path", "split", "dataset")


def cmd_data_inspect(args) -> None:
    from .data.tools import inspect

    print(inspect(args.dir))


def cmd_data_stats(args) -> None:
    from .data.tools import stats

    print(stats(args.dir))


def cmd_data_show(args) -> None:
    from .data.tools import show

    if args.image_only:  # the record's own image, as a model would see it: no drawing, no scaling
        from .data.store import RecordStore

        store = RecordStore(args.dir)
        if not 0 <= args.index < len(store):
            raise IndexError(f"{store.path}: index {args.index} out of range for {len(store)} records")
        Path(args.out).write_bytes(store[args.index]["image"])
        print(args.out)
        return
    print(show(args.dir, args.index, args.out))


# ---------------------------------------------------------------- tokenizers
def cmd_tokenizers_train(args) -> None:
    from .config import load_config
    from .recipes import train_text_tokenizer

    run = load_config(args.config, _overrides(args.set))
    if args.what == "text":
        tok = train_text_tokenizer(run, vocab_size=args.vocab_size)
        print(f"wrote {run.tokenizers.text}: {tok.size} pieces")
    else:  # the VQ-VAE trainer owns its options (see `python -m unitok.modalities.vq_train -h`)
        from .modalities import vq_train

        vq_train.main(["--what", args.what, "--out", args.out or f"tokenizers/{args.what}_vq", *args.extra])


# --------------------------------------------------------------------- tasks
def cmd_tasks_list(args) -> None:
    from .tasks.formats import FORMATS
    from .tasks.spec import load_tasks

    for name, spec in load_tasks(args.dir, formats=FORMATS).items():
        print(f"{name:24s} {spec.target.format:10s} {spec.metric:18s} data={spec.data:12s} {spec.prompt[0]!r}")


def cmd_tasks_check(args) -> None:
    from .recipes import check_metric
    from .tasks.formats import FORMATS
    from .tasks.spec import TaskSpecError, load_task

    files = args.files or sorted(str(p) for p in Path(args.dir).glob("*.yaml"))
    bad = 0
    for f in files:
        try:
            check_metric(load_task(f, formats=FORMATS))
            print(f"ok    {f}")
        except TaskSpecError as e:
            bad += 1
            print(f"FAIL  {e}")
    if bad:
        raise SystemExit(1)


# --------------------------------------------------------------------- train
def _init_distributed():
    """Under torchrun (WORLD_SIZE > 1): join the process group (gloo on CPU, NCCL on GPU)."""
    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if backend == "nccl" else "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_train(args) -> None:
    import torch.distributed as dist

    from .config import load_config
    from .recipes import train

    overrides = _overrides(args.set)
    if args.steps:
        overrides["train.steps"] = args.steps
    if args.init:
        overrides["train.init"] = args.init
    run = load_config(args.config, overrides)
    device = args.device or _init_distributed()
    _, results = train(run, args.out, resume=not args.fresh, device=device)
    if results and (not dist.is_initialized() or dist.get_rank() == 0):
        from .eval import format_table, write_results

        write_results(results, Path(args.out))
        print(format_table(results))
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------- eval
def cmd_eval(args) -> None:
    from .config import load_config
    from .eval import format_summary, write_results
    from .recipes import evaluate_checkpoint

    run = load_config(args.config) if args.config else None
    results = evaluate_checkpoint(args.checkpoint, run, tasks=args.tasks, split=args.split,
                                  max_examples=args.max_examples, data_root=args.data_root,
                                  blind=not args.no_blind, constant=not args.no_constant)
    out = Path(args.out or args.checkpoint)
    json_path, md_path = write_results(results, out)
    print(format_summary(results))
    print(f"wrote {json_path} and {md_path} (every metric key)")


def cmd_export(args) -> None:
    from .recipes import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, tasks_dir=args.tasks_dir, dtype=args.dtype)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    print(f"exported {args.checkpoint} -> {path} ({size / 1e6:.1f} MB)")


# ------------------------------------------------------------------- predict
def _jsonable(obj):
    if is_dataclass(obj):
        return {k: _jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return {"shape": list(obj.shape), "dtype": str(obj.dtype)}
    return obj


def cmd_predict(args) -> None:
    from .inference.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(args.checkpoint)
    kwargs = {"image": args.image, "image2": args.image2, "task": args.task}
    if args.video:
        kwargs["video"] = args.video
    if args.region:
        kwargs["region"] = args.region
    output = pipe(args.prompt, decoding=_overrides(args.decode),
                  **{k: v for k, v in kwargs.items() if v is not None})
    print(json.dumps({"output": _jsonable(output), "type": type(output).__name__}, indent=1))
    if args.save_vis:
        from .inference.visualize import visualize

        first = args.image or (args.video or [None])[0]
        visualize(output, first, region=args.region).save(args.save_vis)
        print(f"saved {args.save_vis}", file=sys.stderr)


# ---------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unitok", description="Unified vision-language modelling: prompt -> token sequence.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build, import and look at record stores").add_subparsers(dest="sub", required=True)
    b = data.add_parser("build", help="generate a synthetic world store")
    b.add_argument("kind", choices=["world", "world_pairs", "world_video"])
    b.add_argument("--split", default="train", choices=["train", "val", "test"])
    b.add_argument("--n", type=int, required=True)
    b.add_argument("--out", required=True)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--size", type=int, default=64, help="image side in pixels")
    b.set_defaults(fn=cmd_data_build)
    imp = data.add_parser("import", help="import COCO / COCO captions / VQA v2 / RefCOCO / JSONL into a store")
    imp.add_argument("kind", choices=["coco", "coco_captions", "vqa", "refcoco", "jsonl"])
    imp.add_argument("--out", required=True)
    for name in _IMPORT_ARGS:
        imp.add_argument(f"--{name}")
    imp.add_argument("--skip-bad", action="store_true", help="skip bad items, count and list them in a report")
    imp.set_defaults(fn=cmd_data_import)
    for name, fn, help_ in (("inspect", cmd_data_inspect, "counts, fields, categories"),
                            ("stats", cmd_data_stats, "distributions")):
        q = data.add_parser(name, help=help_)
        q.add_argument("dir")
        q.set_defaults(fn=fn)
    s = data.add_parser("show", help="render a record with its annotations to a PNG")
    s.add_argument("dir")
    s.add_argument("--index", type=int, default=0)
    s.add_argument("--out", default="record.png")
    s.add_argument("--image-only", action="store_true", help="write the record's image alone, unannotated")
    s.set_defaults(fn=cmd_data_show)

    tok = sub.add_parser("tokenizers", help="train modality tokenizers").add_subparsers(dest="sub", required=True)
    t = tok.add_parser("train")
    t.add_argument("--what", default="text", choices=["text", "image", "dense"])
    t.add_argument("--config", default="configs/tiny.yaml")
    t.add_argument("--vocab-size", type=int, default=1000)
    t.add_argument("--out", help="asset prefix for image/dense tokenizers")
    t.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE")
    t.set_defaults(fn=cmd_tokenizers_train, takes_extra=True)  # image/dense: other options go to the VQ trainer

    tasks = sub.add_parser("tasks", help="list and check task specs").add_subparsers(dest="sub", required=True)
    tl = tasks.add_parser("list")
    tl.add_argument("--dir", default="tasks")
    tl.set_defaults(fn=cmd_tasks_list)
    tc = tasks.add_parser("check")
    tc.add_argument("files", nargs="*")
    tc.add_argument("--dir", default="tasks")
    tc.set_defaults(fn=cmd_tasks_check)

    tr = sub.add_parser("train", help="train a model on a task mixture (torchrun for several processes)")
    tr.add_argument("--config", default="configs/tiny.yaml")
    tr.add_argument("--out", default="runs/tiny")
    tr.add_argument("--steps", type=int)
    tr.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint in --out")
    tr.add_argument("--init", metavar="CHECKPOINT", help="fine-tune: start from this checkpoint's weights "
                    "(e.g. checkpoints/default; same vocabulary and model sizes); train.freeze keeps parts fixed")
    tr.add_argument("--device")
    tr.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help="override config fields, e.g. train.lr=3e-4")
    tr.set_defaults(fn=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a checkpoint with each task's metric")
    ev.add_argument("--checkpoint", required=True)
    ev.add_argument("--config", help="run config (data root, world sizes); default: the checkpoint's")
    ev.add_argument("--tasks", nargs="*")
    ev.add_argument("--split")
    ev.add_argument("--max-examples", type=int)
    ev.add_argument("--data-root")
    ev.add_argument("--out", help="where metrics.json and metrics.md go (default: the checkpoint dir)")
    ev.add_argument("--no-blind", action="store_true",
                    help="skip the blind baseline (inputs withheld) and vision_gain: about half the time")
    ev.add_argument("--no-constant", action="store_true",
                    help="skip the constant baseline (the most frequent train answer, text and label tasks)")
    ev.set_defaults(fn=cmd_eval)

    ex = sub.add_parser("export", help="a release copy of a checkpoint: weights only, no optimizer state")
    ex.add_argument("--checkpoint", required=True)
    ex.add_argument("--out", required=True)
    ex.add_argument("--tasks-dir", help="refresh the specs' evaluation fields (decoding, metric, ...) from here")
    ex.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ex.set_defaults(fn=cmd_export)

    pr = sub.add_parser("predict", help="run one prompt on an image")
    pr.add_argument("--image")
    pr.add_argument("--image2")
    pr.add_argument("--video", nargs="*")
    pr.add_argument("--region", nargs=4, type=float)
    pr.add_argument("--prompt")
    pr.add_argument("--task")
    pr.add_argument("--checkpoint", help="default: the shipped checkpoints/default")
    pr.add_argument("--save-vis", help="write a visualisation PNG")
    pr.add_argument("--decode", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override the task's decoding settings, e.g. strategy=beam beam_size=4, or strategy=sample seed=0")
    pr.set_defaults(fn=cmd_predict)
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not (getattr(args, "takes_extra", False) and args.what != "text"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.fn(args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        if args.verbose:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise SystemExit(f"unitok: error: {msg}") from None


if __name__ == "__main__":
    main()
