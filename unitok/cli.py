"""The ``unitok`` command line. Each subcommand is a thin shell over ``unitok.recipes`` and the layers.

    unitok data build world --split train --n 2000 --out data/world/train
    unitok data import coco --instances ann.json --images imgs/ --out data/mycoco/train
    unitok data export coco data/world/val --out build/world_coco [--palette shifted]
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

from .errors import InputError, UniTokError, message

# A user's mistake: printed as its message alone, in one line, with exit status 2 (argparse's for a usage
# error); `--debug` shows the traceback. Anything else is a bug and keeps its traceback. Plain ValueError
# and KeyError stay here for the layers' messages that predate UniTokError.
USER_ERRORS = (UniTokError, ValueError, KeyError, FileNotFoundError, FileExistsError, IsADirectoryError,
               NotADirectoryError, PermissionError)


def _value(text: str):
    """Parse ``--set key=value`` values as YAML scalars (numbers, booleans, lists)."""
    import yaml

    return yaml.safe_load(text)


def _overrides(pairs: list[str], flag: str = "--set") -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InputError(f"{flag}: expected KEY=VALUE, got {pair!r}")
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

    kwargs = _import_options(args.kind, {k: v for k, v in vars(args).items() if k in _IMPORT_ARGS and v is not None})
    report = import_dataset(args.kind, out=args.out, skip_bad=args.skip_bad, **kwargs)
    print(report.summary())


_IMPORT_ARGS = ("instances", "images", "captions", "questions", "annotations", "refs", "path", "split", "dataset")


def _import_options(kind: str, given: dict) -> dict:
    """``given`` checked against what the ``kind`` importer takes (its signature), so an option listed in
    ``data import -h`` that this importer has no use for, or one it needs, is named before anything runs."""
    import inspect

    from .data.importers import IMPORTERS

    params = inspect.signature(IMPORTERS[kind]).parameters
    takes = [n for n in _IMPORT_ARGS if n in params]

    def flags(names) -> str:
        return ", ".join(f"--{n}" for n in names)

    unused = [n for n in given if n not in takes]
    if unused:
        raise InputError(f"data import {kind}: {flags(unused)} is not an option of this importer; "
                         f"it takes {flags(takes)}")
    missing = [n for n in takes if params[n].default is inspect.Parameter.empty and n not in given]
    if missing:
        raise InputError(f"data import {kind} needs {flags(missing)}")
    return given


def cmd_data_export(args) -> None:
    from .data.export import export_coco

    counts = export_coco(args.store, args.out, palette=args.palette, limit=args.limit)
    print(f"exported {counts['images']} images, {counts['objects']} objects, {counts['captions']} captions and "
          f"{counts['questions']} questions from {args.store} to {args.out}")


def cmd_data_inspect(args) -> None:
    from .data.tools import inspect

    print(inspect(args.dir))


def cmd_data_stats(args) -> None:
    from .data.tools import stats

    print(stats(args.dir))


def cmd_data_show(args) -> None:
    from .data.store import RecordStore
    from .data.tools import show

    out = Path(args.out)
    if out.is_dir():
        raise InputError(f"--out {out} is a directory; name the PNG file to write")
    if out.exists() and not args.force:
        raise InputError(f"--out {out} already exists; pass --force to overwrite it")
    store = RecordStore(args.dir, check_world=False)
    n = len(store)
    store.close()
    if not 0 <= args.index < n:
        span = f"0 to {n - 1}" if n else "none: the store is empty"
        raise InputError(f"--index {args.index} is out of range: {args.dir} holds {n} records (indexes {span})")
    if args.image_only:  # the record's own image, as a model would see it: no drawing, no scaling
        store = RecordStore(args.dir)
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
        print(f"wrote {run.resolve(run.tokenizers.text)}: {tok.size} pieces")
    else:  # the VQ-VAE trainer owns its options (see `python -m unitok.train.vq -h`)
        from .train import vq

        vq.main(["--what", args.what, "--out", args.out or f"tokenizers/{args.what}_vq", *args.extra])


# --------------------------------------------------------------------- tasks
def cmd_tasks_list(args) -> None:
    from .tasks.formats import FORMATS
    from .tasks.spec import load_tasks

    for name, spec in load_tasks(args.dir, formats=FORMATS).items():
        print(f"{name:24s} {spec.target.format:10s} {spec.metric:18s} data={spec.data:12s} {spec.prompt[0]!r}")


def _spec_problems(spec, path: str, seen: dict[str, str], data_root: str) -> list[str]:
    """What loading the specs together (``tasks list``, training) or reading their data would refuse:
    a name that is not the file's, a name another file already has, fields the spec's store lacks."""
    from .recipes import spec_data_problems
    from .tasks.spec import TaskSpecError, check_file_name

    problems = []
    try:
        check_file_name(spec, path)
    except TaskSpecError as e:
        problems.append(str(e))
    if spec.name in seen:
        problems.append(f"{path}: field 'name': {spec.name!r} is also the name of {seen[spec.name]}")
    seen.setdefault(spec.name, path)
    return problems + spec_data_problems(spec, data_root)


def cmd_tasks_check(args) -> None:
    from .recipes import check_metric, list_reference_warnings
    from .tasks.formats import FORMATS
    from .tasks.spec import TaskSpecError, load_task

    files = args.files or sorted(str(p) for p in Path(args.dir).glob("*.yaml"))
    bad, seen = 0, {}
    for f in files:
        try:
            spec = load_task(f, formats=FORMATS)
            check_metric(spec)
            problems = _spec_problems(spec, f, seen, args.data_root)  # name, duplicates, fields the data lacks
            if problems:
                bad += 1
                print("\n".join(f"FAIL  {p}" for p in problems))
                continue
            print(f"ok    {f}")
            for warning in list_reference_warnings(spec, args.data_root):  # looks at the data when it is there
                print(f"WARN  {warning}")
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
    if not dist.is_initialized() or dist.get_rank() == 0:
        from .train.logs import TENSORBOARD_DIR

        out = Path(args.out).resolve()
        board = f", TensorBoard: {out / TENSORBOARD_DIR}" if run.train.tensorboard else ""
        print(f"logs: {out} (log.csv, eval.csv{board})", flush=True)
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


def _predict_inputs(args) -> tuple[dict, dict]:
    """What ``predict`` can check before the model loads, so a mistake costs milliseconds: each image
    readable and at least MIN_SIDE pixels a side, the prompt UTF-8 text, the --decode options known and
    typed. Returns the images (as bytes, read once) and the decoding overrides."""
    from .generation.options import DecodingOptions
    from .modalities.image import check_size, load_image

    if args.prompt is not None:
        try:
            args.prompt.encode("utf-8")
        except UnicodeEncodeError as e:  # a non-UTF-8 argument arrives with its bytes escaped
            raise InputError(f"--prompt: not valid UTF-8 text (undecodable byte at character {e.start})") from None

    def read(flag: str, path: str) -> bytes:
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise InputError(f"{flag}: cannot read image file {path}: {e.strerror}") from None
        check_size(load_image(data, what=f"{flag} {path}"), what=f"{flag} {path}")
        return data

    images = {key: read(flag, path) for flag, key, path in (("--image", "image", args.image),
                                                            ("--image2", "image2", args.image2)) if path is not None}
    if args.video:
        images["video"] = [read(f"--video (frame {i})", f) for i, f in enumerate(args.video)]
    try:
        decoding = _overrides(args.decode, "--decode")
        DecodingOptions().replace(**decoding)
    except ValueError as e:  # the key at fault, and every key with what it takes
        text = message(e).removeprefix("--decode: ")
        known = "" if "known:" in text else f"; options: {DecodingOptions.usage()}"
        raise InputError(f"--decode: {text}{known}") from None
    return images, decoding


def _check_flags(pipe, args) -> None:
    """The inputs the routed task needs, named by the flags a user types (``--image2``, not ``image2=``)."""
    from .inference.pipeline import UnknownPromptError, prompt_text

    try:
        route = pipe.route(prompt_text(args.prompt), args.task)
    except UnknownPromptError as e:
        raise UnknownPromptError(str(e).replace("task=NAME", "--task NAME")) from None
    needs = pipe.tasks[route.task].inputs
    missing = [flag for flag, need, given in (("--image", needs.image, args.image), ("--image2", needs.image2, args.image2),
                                              ("--video", needs.video, args.video)) if need and not given]
    if needs.region and not args.region and route.region is None:
        missing.append("--region X0 Y0 X1 Y1 (or four numbers in --prompt)")
    if missing:
        raise InputError(f"task {route.task} needs {' and '.join(missing)}")


def cmd_predict(args) -> None:
    from .inference.pipeline import Pipeline

    images, decoding = _predict_inputs(args)
    pipe = Pipeline.from_pretrained(args.checkpoint)
    _check_flags(pipe, args)
    kwargs = {**images, "task": args.task}
    if args.region:
        kwargs["region"] = args.region
    output = pipe(args.prompt, decoding=decoding, **{k: v for k, v in kwargs.items() if v is not None})
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
    p.add_argument("--debug", action="store_true", help="show the traceback of an error, not only its one-line message")
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
    exp = data.add_parser("export", help="write a store as COCO files: images/, instances.json, captions.json, "
                          "questions.jsonl").add_subparsers(dest="format", required=True)
    ec = exp.add_parser("coco", help="COCO instances + captions, and the questions as one-per-line JSONL")
    ec.add_argument("store")
    ec.add_argument("--out", required=True, help="a new (or empty) directory")
    ec.add_argument("--palette", help="'shifted': repaint world scenes in other colours of the same names")
    ec.add_argument("--limit", type=int, help="only the first N records")
    ec.set_defaults(fn=cmd_data_export)
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
    s.add_argument("--force", action="store_true", help="overwrite --out if it exists")
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
    tc.add_argument("--data-root", default="data", help="where the specs' stores are (<root>/<data>/<split>); "
                    "where one is there, its records show the fields a spec names that the data lacks, and "
                    "whether exact-match accuracy meets a list field")
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
    pr.add_argument("--checkpoint",
                    help="default: $UNITOK_DEFAULT_CHECKPOINT, else the repository's checkpoints/default")
    pr.add_argument("--save-vis", help="write a visualisation PNG")
    pr.add_argument("--decode", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override the task's decoding settings, e.g. strategy=beam beam_size=4, or strategy=sample seed=0")
    pr.set_defaults(fn=cmd_predict)
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted after the subcommand too, where a user adds it on a rerun
    args, extra = parser.parse_known_args([a for a in argv if a != "--debug"])
    args.debug = debug
    if extra and not (getattr(args, "takes_extra", False) and args.what != "text"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args.fn(args)
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"unitok: error: {' '.join(message(e).split())}", file=sys.stderr)  # one line
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
