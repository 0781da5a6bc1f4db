"""Recipes: the steps a user runs, composed from the layers (used by the CLI, app and tests).

    prepare_data(run)           build the world stores the run's tasks read, where missing
    train_text_tokenizer(run)   SentencePiece on the world's text + the task prompts
    build_codec(run)            the unified vocabulary and its tokenizers
    train(run, out)             the Trainer over the run's task mixture, evaluating at the end
    evaluate_checkpoint(path)   a checkpoint's tasks on their eval split, with their metrics and baselines
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import string
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

from .config import RunConfig
from .data.store import RecordStore, StoreError, StoreWriter
from .data.world import KINDS, WorldConfig, iter_world, meta_for
from .tasks.formats import FORMATS, resolve_choices
from .tasks.spec import TaskSpec, TaskSpecError, load_tasks

if TYPE_CHECKING:  # the model stack (torch) is imported where it is used: `unitok tasks list|check` never need it
    from .modalities.codec import Codec
    from .modalities.text import TextTokenizer

log = logging.getLogger(__name__)


def store_path(run: RunConfig, dataset: str, split: str) -> Path:
    return run.resolve(run.data.root) / dataset / split


def build_world_store(kind: str, split: str, n: int, out: str | Path, *, seed: int = 0, size: int = 64,
                      replace_incomplete: bool = False) -> Path:
    """Generate ``n`` world records into a store at ``out``: written beside it and renamed into place when
    complete, so a build killed midway leaves no half store under ``out``. An existing store at ``out`` is
    refused, unless it is incomplete and ``replace_incomplete`` (an interrupted older build)."""
    cfg, out = WorldConfig(seed=seed, size=size), Path(out)
    if (out / "data.mdb").exists() and not (replace_incomplete and not _complete(out)):
        raise StoreError(f"{out}: a store already exists here; remove it or choose another --out")
    tmp = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with StoreWriter(tmp, meta_for(kind, cfg, split)) as w:
            w.extend(iter_world(cfg, n, split, kind=kind))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def check_metric(spec: TaskSpec) -> None:
    """The spec's metric must name a registered evaluator that takes its options (checked here: tasks
    never import eval). A bad name is reported at field 'metric', a bad option at 'metric_options'."""
    from .eval import build_evaluator, primary_key

    try:
        primary_key(spec.metric)  # the name (and an '@' parameter) alone
        named = True
    except (KeyError, ValueError):
        named = False
    try:
        if any(isinstance(v, str) and v.startswith("meta:") for v in spec.metric_options.values()):
            if not named:  # options come from a store: check the name only
                build_evaluator(spec.metric)
        else:
            build_evaluator(spec.metric, **spec.metric_options)
    except (KeyError, ValueError, TypeError) as e:
        message = str(e.args[0] if e.args else e)
        field = "metric_options" if named and spec.metric_options else "metric"
        for key in spec.metric_options if named else ():  # "references: expected ..." -> that option
            if message.startswith(f"{key}: "):
                field, message = f"metric_options.{key}", message[len(key) + 2:]
        raise TaskSpecError(f"{spec.source}: field '{field}': {message}") from None


# Metrics that compare a prediction with a reference string exactly: a list reference means "any of them"
# unless the spec's metric_options say otherwise (``references: any | all | first``).
EXACT_MATCH_METRICS = ("accuracy",)


def list_reference_warnings(spec: TaskSpec, data_root: str | Path = "data", *, max_records: int = 50) -> list[str]:
    """Warnings for a spec whose exact-match metric meets a reference that is a list in the data.

    Looks at the first records of the spec's eval store (else its train store) under ``data_root``, for
    the first example (``each`` item passing ``where``) that has the reference field. No store, or no
    record with the field, means nothing can be seen: no warning. A spec that sets
    ``metric_options.references`` has said how the list is used: no warning either."""
    from .data.store import StoreError
    from .tasks.fields import matches, resolve

    if spec.metric.split("@")[0] not in EXACT_MATCH_METRICS or "references" in spec.metric_options:
        return []
    field, path = ("target.reference", spec.target.reference) if spec.target.reference else ("target.field", spec.target.field)
    for split in dict.fromkeys((spec.splits.eval, spec.splits.train)):
        store_dir = Path(data_root) / spec.data / split
        if not (store_dir / "data.mdb").exists():
            continue
        try:
            store = RecordStore(store_dir, check_world=False)  # only the shape of a field is looked at
            try:
                records = [store[i] for i in range(min(max_records, len(store)))]
            finally:
                store.close()
        except StoreError:
            continue
        for record in records:
            try:
                items = [None] if spec.each is None else list(resolve(spec.each, record))
            except (KeyError, TypeError):
                continue
            for item in items:
                if spec.where and not matches(spec.where, record, item):
                    continue
                try:
                    value = resolve(path, record, item)
                except KeyError:
                    continue
                if not isinstance(value, (list, tuple)):
                    return []
                return [f"{spec.source}: field '{field}': warning: {path!r} is a list in {store_dir} (record "
                        f"{record.get('id')!r} has {len(value)}), and exact-match {spec.metric!r} counts a "
                        f"prediction right if it equals any of them; say how the references are used with "
                        f"metric_options: {{references: any | all | first}}, or pick one item ({path}.0)"]
    return []


def load_run_tasks(run: RunConfig) -> dict[str, TaskSpec]:
    tasks = load_tasks(run.resolve(run.tasks.dir), run.task_names(), formats=FORMATS)  # with train.stages: every stage's
    for spec in tasks.values():
        check_metric(spec)
    return tasks


def prepare_data(run: RunConfig, tasks: dict[str, TaskSpec], splits: Iterable[str] = ("train", "val")) -> None:
    """Build the world stores the tasks read (``data: world*``) when they are missing."""
    world = run.data.world
    for dataset in sorted({t.data for t in tasks.values()}):
        for split in splits:
            path = store_path(run, dataset, split)
            if (path / "data.mdb").exists():
                if dataset not in KINDS or _complete(path):
                    continue  # an incomplete imported store fails when opened, naming its path
                log.warning("%s: incomplete store (its build was interrupted); generating it again", path)
            if dataset not in KINDS:
                raise FileNotFoundError(f"{path}: no store for dataset {dataset!r}; import it with `unitok data import`")
            n = getattr(world, split)
            log.info("building %s/%s: %d records", dataset, split, n)
            build_world_store(dataset, split, n, path, seed=world.seed, size=world.size, replace_incomplete=True)


def _complete(path: Path) -> bool:
    try:
        RecordStore(path).close()
        return True
    except StoreError:
        return False


def open_stores(run: RunConfig, tasks: dict[str, TaskSpec], which: str) -> dict[str, RecordStore]:
    """{task: store of its ``splits.train`` or ``splits.eval`` split}."""
    return {name: RecordStore(store_path(run, spec.data, getattr(spec.splits, which))) for name, spec in tasks.items()}


def _meta_value(value, meta: dict, where: str):
    if isinstance(value, str) and value.startswith("meta:"):
        key = value.removeprefix("meta:")
        if key not in meta:
            raise KeyError(f"{where} names meta key {key!r}, which the store's metadata lacks (has: {sorted(meta)})")
        return meta[key]
    return value


def with_resolved_choices(tasks: dict[str, TaskSpec], stores: dict[str, RecordStore]) -> dict[str, TaskSpec]:
    """Replace ``meta:KEY`` references (label choices, metric options) by the store's values, so a
    checkpoint's task specs need no store."""
    out = {}
    for name, spec in tasks.items():
        meta = stores[name].meta
        if isinstance(spec.target.choices, str):
            choices = resolve_choices(spec.target, meta)
            spec = spec.model_copy(update={"target": spec.target.model_copy(update={"choices": choices})})
        if spec.metric_options:
            options = {k: _meta_value(v, meta, f"{spec.source}: metric_options.{k}") for k, v in spec.metric_options.items()}
            spec = spec.model_copy(update={"metric_options": options})
        out[name] = spec
    return out


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in ("id",):
                yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def text_corpus(stores: Iterable[RecordStore], tasks: Iterable[TaskSpec]) -> Iterator[str]:
    """Every string field of every record, the store metadata (labels, answers), and prompt templates."""
    for spec in tasks:
        for template in spec.prompt:
            yield "".join(lit for lit, _, _, _ in string.Formatter().parse(template))
    for store in stores:
        yield from _strings({k: v for k, v in store.meta.items() if k != "provenance"})
        for record in store:
            yield from _strings(record)


def train_text_tokenizer(run: RunConfig, *, vocab_size: int = 1000) -> TextTokenizer:
    """SentencePiece on the run's text (`unitok tokenizers train`), written to ``tokenizers.text``. The one place
    a text model is made: training never makes one behind the user's back (`build_codec`)."""
    from .modalities.text import TextTokenizer

    tasks = load_run_tasks(run)
    prepare_data(run, tasks, splits=("train",))
    stores = {str(store_path(run, t.data, t.splits.train)) for t in tasks.values()}
    corpus = list(text_corpus([RecordStore(p) for p in sorted(stores)], tasks.values()))
    out = run.resolve(run.tokenizers.text)
    log.info("training SentencePiece on %d strings -> %s", len(corpus), out)
    return TextTokenizer.train(corpus, out, vocab_size=vocab_size)


def with_parent_model(run: RunConfig) -> tuple[RunConfig, Codec]:
    """For ``train.init``: the run with the parent checkpoint's model settings, and the parent's codec
    (its text model and VQ tokenizers), so the weights fit. A model setting of the run that differs
    is reported and replaced: fine-tuning changes the tasks and data, not the architecture."""
    from .checkpoint import CheckpointError, load_codec

    parent = run.resolve(run.train.init)
    if not (parent / "config.json").exists():
        raise CheckpointError(f"train.init: {parent} is not a checkpoint (no config.json)")
    model = json.loads((parent / "config.json").read_text())["model"]
    model = {k: v for k, v in model.items() if k not in ("vocab_size", "expert_ranges", "coord_range")}
    changed = sorted(k for k, v in run.model.items() if model.get(k) != v)
    if changed:
        log.warning("train.init %s: using the checkpoint's model settings, not the run's, for %s", parent, changed)
    return run.model_copy(update={"model": model}), load_codec(parent)


def build_codec(run: RunConfig) -> Codec:
    """The run's vocabulary from its tokenizer files. A missing one is an error naming the config field and the
    file (`unitok tokenizers train` makes them), never a SentencePiece model trained on the spot."""
    from .modalities.codec import Codec
    from .modalities.text import TextTokenizer
    from .modalities.vq.tokenizer import load_tokenizer

    field = "tokenizers.text"
    try:
        text = TextTokenizer.from_file(run.resolve(run.tokenizers.text))
        vq = {}
        for name in ("image", "dense"):
            if getattr(run.tokenizers, name):
                field = f"tokenizers.{name}"
                vq[name] = load_tokenizer(run.resolve(getattr(run.tokenizers, name)))
    except FileNotFoundError as e:
        kind = field.removeprefix("tokenizers.")
        hint = "" if kind == "text" else f" (train one with `unitok tokenizers train --what {kind}`)"
        raise FileNotFoundError(f"{run.source}: field '{field}': {e}{hint}") from None
    return Codec.build(text, run.tokenizers.coord_bins, **vq)


def train(run: RunConfig, out: str | Path, *, steps: int | None = None, resume: bool = True,
          eval_examples: int | None = None, device: str = "cpu"):
    """Train the run's task mixture; returns (trainer, final eval results)."""
    from .inference.evaluate import evaluate_tasks
    from .inference.predictor import Predictor
    from .tasks.examples import ExampleBuilder
    from .train.data import TaskSource
    from .train.trainer import Trainer

    tasks = load_run_tasks(run)
    if run.train.init:  # fine-tuning keeps the parent's vocabulary and architecture
        run, codec = with_parent_model(run)
    else:  # before the data is built, so a missing tokenizer fails at once
        codec = build_codec(run)
    prepare_data(run, tasks)
    train_stores = open_stores(run, tasks, "train")
    tasks = with_resolved_choices(tasks, train_stores)
    model_cfg = run.model_settings()
    sources = [TaskSource.filtered(ExampleBuilder.for_model(spec, codec, model_cfg, meta=train_stores[name].meta),
                                   train_stores[name]) for name, spec in tasks.items()]
    eval_stores = open_stores(run, tasks, "eval")
    n_eval = eval_examples or run.train.eval_examples

    def evaluate(model, step):
        # fp32 unless bf16 was asked for outright: the learning curve must not depend on the CPU
        predictor = Predictor(model, codec, tasks, bf16=run.train.bf16 is True, device=device)
        return evaluate_tasks(predictor, eval_stores, max_examples=n_eval, progress=False)

    trainer = Trainer(run, out, codec, tasks, sources, evaluate=evaluate, resume=resume, device=device)
    results = trainer.fit(steps)
    return trainer, results


def evaluate_checkpoint(path: str | Path, run: RunConfig | None = None, *, tasks: list[str] | None = None,
                        split: str | None = None, max_examples: int | None = None, data_root: str | None = None,
                        batch_size: int = 32, blind: bool = True, constant: bool = True,
                        constant_records: int = 2000) -> dict[str, dict]:
    """Each task of a checkpoint on its eval split (or ``split``), scored by its metric, with ``ref_logp``.

    ``blind``: also the blind baseline and ``vision_gain`` (see `unitok.inference.evaluate`).
    ``constant``: for text and label tasks, also the score of always giving the most frequent target of
    the first ``constant_records`` records of the task's train split (`constant_answers`)."""
    from .checkpoint import load_checkpoint
    from .inference.evaluate import evaluate_tasks
    from .inference.predictor import Predictor

    ckpt = load_checkpoint(path)
    run = run or ckpt.run
    chosen = {n: s for n, s in ckpt.tasks.items() if tasks is None or n in tasks}
    unknown = set(tasks or []) - set(ckpt.tasks)
    if unknown:
        raise KeyError(f"checkpoint {path} has no task(s) {sorted(unknown)}; it has: {', '.join(ckpt.tasks)}")
    root = Path(data_root) if data_root else run.resolve(run.data.root) if run else Path("data")
    stores = {}
    for name, spec in chosen.items():
        p = root / spec.data / (split or spec.splits.eval)
        if not (p / "data.mdb").exists() and spec.data in KINDS and run is not None:
            w = run.data.world
            build_world_store(spec.data, split or spec.splits.eval, getattr(w, split or spec.splits.eval) or 200, p,
                              seed=w.seed, size=w.size)
        stores[name] = RecordStore(p)
    predictor = Predictor(ckpt.model, ckpt.codec, chosen)
    constants = constant_answers(predictor.builders, root, run, max_records=constant_records) if constant else None
    return evaluate_tasks(predictor, stores, max_examples=max_examples, batch_size=batch_size, reference_logp=True,
                          blind_pass=blind, constants=constants)


def train_records(root: Path, dataset: str, split: str, run: RunConfig | None) -> Iterator[dict] | None:
    """The records of ``<root>/<dataset>/<split>`` in order. A missing world store is not built: its
    records are generated on the fly (they depend only on the world config and the index, so they are
    those the store would hold). None when the store is missing and cannot be generated."""
    path = root / dataset / split
    if (path / "data.mdb").exists():
        return iter(RecordStore(path))
    if dataset in KINDS and run is not None:
        w = run.data.world
        return iter_world(WorldConfig(seed=w.seed, size=w.size), getattr(w, split, 0) or 0, split, kind=dataset)
    return None


def constant_answers(builders: dict, root: Path, run: RunConfig | None, *, max_records: int = 2000) -> dict[str, str]:
    """{task: the most frequent target string of the first ``max_records`` records of its train split}, for
    tasks whose target is one string (text, label); tasks without a train store are left out (logged)."""
    from .inference.evaluate import CONSTANT_FORMATS, most_frequent_targets

    by_source: dict[tuple[str, str], dict] = {}
    for name, b in builders.items():
        if b.spec.target.format in CONSTANT_FORMATS:
            by_source.setdefault((b.spec.data, b.spec.splits.train), {})[name] = b
    answers = {}
    for (dataset, split), group in by_source.items():
        records = train_records(root, dataset, split, run)
        if records is None:
            log.warning("no %s store at %s: no constant baseline for %s", split, root / dataset / split, sorted(group))
            continue
        found = most_frequent_targets(group, records, max_records=max_records)
        answers.update({task: answer for task, (answer, _) in found.items()})
    return answers


# Spec fields that only change how a task is decoded and scored, not what the model learned: these may be
# refreshed from tasks/ when a checkpoint is exported. Everything else must match the trained spec.
EVAL_FIELDS = ("description", "decoding", "metric", "metric_options", "retrieval_pool")


def export_checkpoint(src: str | Path, dst: str | Path, *, tasks_dir: str | Path | None = None,
                      dtype: str = "float32") -> Path:
    """A release copy of a training checkpoint: weights (``dtype``), config, vocabulary, tokenizers and task
    specs, without the optimizer state. With ``tasks_dir``, the evaluation-side fields (`EVAL_FIELDS`) of
    each spec are refreshed from that directory; a spec whose training-side fields differ is refused."""
    import torch

    from .checkpoint import load_checkpoint, save_checkpoint

    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"export dtype must be float32 or bfloat16, got {dtype!r}")
    ckpt = load_checkpoint(src)
    tasks = dict(ckpt.tasks)
    if tasks_dir is not None:
        current = load_tasks(tasks_dir, [n for n in tasks if (Path(tasks_dir) / f"{n}.yaml").exists()], formats=FORMATS)
        keep = sorted(set(TaskSpec.model_fields) - set(EVAL_FIELDS) - {"source", "target"})
        for name, new in current.items():
            old = tasks[name]
            changed = [f for f in keep if getattr(old, f) != getattr(new, f)]
            t_old, t_new = old.target.model_dump(exclude={"choices"}), new.target.model_dump(exclude={"choices"})
            if changed or t_old != t_new:
                raise TaskSpecError(f"{new.source}: field '{(changed or ['target'])[0]}' differs from the spec the "
                                    f"checkpoint {src} was trained on; retrain, or export without --tasks-dir")
            update = {f: getattr(new, f) for f in EVAL_FIELDS}
            # "meta:KEY" options were resolved from the training store into the checkpoint: keep those values.
            update["metric_options"] = {k: old.metric_options[k] if isinstance(v, str) and v.startswith("meta:")
                                        and k in old.metric_options else v for k, v in new.metric_options.items()}
            tasks[name] = old.model_copy(update=update)
    return save_checkpoint(dst, ckpt.model, ckpt.codec, tasks, ckpt.run, dtype=getattr(torch, dtype))


def spec_data_problems(spec: TaskSpec, data_root: str | Path = "data", *, max_records: int = 50) -> list[str]:
    """What ``tasks check`` reports when a spec's store is there: each template placeholder, target,
    input, ``each`` or ``where`` field that none of the first ``max_records`` records of the spec's
    eval store (else its train store) has, named with the spec's file and field. No store: nothing."""
    from .data.store import StoreError
    from .tasks.fields import missing_fields

    for split in dict.fromkeys((spec.splits.eval, spec.splits.train)):
        store_dir = Path(data_root) / spec.data / split
        if not (store_dir / "data.mdb").exists():
            continue
        try:
            store = RecordStore(store_dir, check_world=False)  # only which fields exist is looked at
            try:
                records = [store[i] for i in range(min(max_records, len(store)))]
            finally:
                store.close()
        except StoreError:  # unfinished or of another version: it shows nothing about the spec
            continue
        known = f"record fields: {', '.join(sorted({k for r in records for k in r}))}"
        if spec.each:
            items = set()
            for r in records:
                value = r.get(spec.each)
                items.update(k for it in (value if isinstance(value, list) else []) if isinstance(it, dict) for k in it)
            known += f"; {spec.each!r} item fields: {', '.join(sorted(items))}" if items else ""
        return [f"{spec.source}: field '{field}': {path!r} is not a field of the records in {store_dir} (none of "
                f"the first {len(records)} has it; {known})" for field, path in missing_fields(spec, records)]
    return []
