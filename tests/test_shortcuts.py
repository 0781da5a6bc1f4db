"""No text-only shortcuts: a model that never sees the image must stay near chance on every label task.

For each task that reads the world and scores a closed answer, train and val stores are built, the task's
examples are made by the real spec with its image inputs removed (the prompt keeps everything else,
including a region's coordinate tokens), and two blind baselines are fitted on the train examples:

    prompt  the most frequent answer per exact prompt (token ids), else the overall most frequent one
    bow     multinomial naive Bayes over the prompt's tokens and token bigrams

Their val accuracy must stay within ``MARGIN`` of chance (for each VQA question type, within 3.5 standard
errors of a chance-level guess if that is wider: a type has only a few hundred val questions). Chance is
1 / number of choices for the label tasks; for VQA, where question templates admit different answer sets, it is the mean over val examples
of 1 / (number of answers the question's template takes in train), the template being the question with
its colour, shape, size, background and number words blanked (2 for a yes/no template; otherwise answers
under 2% of a template's examples are not counted, so a rare stray answer does not lower chance).

Run as a script to print the table: ``python tests/test_shortcuts.py [--scale S] [--tasks ...]``.
"""
from __future__ import annotations

import math
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from unitok.data.store import RecordStore, StoreWriter  # noqa: E402
from unitok.data.world import (BACKGROUNDS, COLOURS, NUMBER_WORDS, SHAPES, WorldConfig, iter_world,  # noqa: E402
                               meta_for)
from unitok.data.world import SIZES as SIZE_WORDS  # noqa: E402
from unitok.modalities.codec import Codec  # noqa: E402
from unitok.modalities.text import TextTokenizer  # noqa: E402
from unitok.tasks.examples import ExampleBuilder  # noqa: E402
from unitok.tasks.formats import FORMATS, resolve_choices  # noqa: E402
from unitok.tasks.spec import load_tasks  # noqa: E402

TASKS = ("classification", "region_classification", "itm", "entailment", "two_image", "vqa", "vqa_closed", "action")
# Records per split. Pairs and clips give one example per record, scenes about 4 (itm) to 13 (vqa).
SIZES = {"world": (1500, 300), "world_pairs": (1000, 600), "world_video": (600, 300)}
MARGIN = 0.06
CFG = WorldConfig(seed=11)
_VOCAB = {*COLOURS, *SHAPES, *(s + ("es" if s.endswith("s") else "s") for s in SHAPES), *SIZE_WORDS, *BACKGROUNDS,
          *NUMBER_WORDS}


def build_stores(root: Path, datasets, scale: float = 1.0) -> dict[tuple[str, str], RecordStore]:
    out = {}
    for dataset in sorted(set(datasets)):
        for split, n in zip(("train", "val"), SIZES[dataset]):
            n = int(n * scale)
            path = root / dataset / split
            with StoreWriter(path, meta_for(dataset, CFG, split)) as w:
                w.extend(iter_world(CFG, n, split, kind=dataset))
            out[dataset, split] = RecordStore(path)
    return out


def codec() -> Codec:
    return Codec.build(TextTokenizer.from_file(REPO / "tokenizers" / "text.model"), 64)


def blind_builder(spec, codec: Codec, meta: dict) -> ExampleBuilder:
    """The task's own builder, minus its image inputs."""
    inputs = spec.inputs.model_copy(update={"image": None, "image2": None, "video": None, "mask_patches": 0.0})
    return ExampleBuilder(spec.model_copy(update={"inputs": inputs}), codec, image_size=64, max_prompt_len=4096,
                          meta=meta)


def examples(builder: ExampleBuilder, store: RecordStore) -> list[tuple[tuple[int, ...], str, str]]:
    """(prompt ids, answer, question template) of every example, as evaluation builds them."""
    out = []
    for record in store:
        for item in builder.items(record):
            ex = builder.build(record, item)
            answer = ex.reference[0] if isinstance(ex.reference, list) else str(ex.reference)
            question = item.get("question", "") if isinstance(item, dict) else ""
            template = " ".join("_" if w.strip("?.") in _VOCAB else w for w in question.split())
            out.append((tuple(ex.prompt), answer, template))
    return out


def prompt_baseline(train, val) -> np.ndarray:
    by_prompt: dict[tuple, Counter] = defaultdict(Counter)
    for prompt, answer, _ in train:
        by_prompt[prompt][answer] += 1
    overall = Counter(a for _, a, _ in train).most_common(1)[0][0]
    guess = {p: c.most_common(1)[0][0] for p, c in by_prompt.items()}
    return np.array([guess.get(p, overall) == a for p, a, _ in val])


def _features(prompt: tuple[int, ...]) -> list:
    return [*prompt, *zip(prompt, prompt[1:])]


def bow_baseline(train, val, alpha: float = 1.0) -> np.ndarray:
    """Multinomial naive Bayes over unigrams and bigrams of the prompt's token ids (features unseen in
    train score the same for every class, so they are left out)."""
    classes = sorted({a for _, a, _ in train})
    index = {c: i for i, c in enumerate(classes)}
    vocab: dict = {}
    rows, cols = [], []
    for prompt, answer, _ in train:
        for f in _features(prompt):
            rows.append(index[answer])
            cols.append(vocab.setdefault(f, len(vocab)))
    counts = np.zeros((len(classes), len(vocab)))
    np.add.at(counts, (np.array(rows), np.array(cols)), 1.0)
    log_p = np.log((counts + alpha) / (counts.sum(1, keepdims=True) + alpha * len(vocab)))  # (C, F)
    prior = np.bincount([index[a] for _, a, _ in train], minlength=len(classes))
    right = []
    for start in range(0, len(val), 2000):
        chunk = val[start:start + 2000]
        x = np.zeros((len(chunk), len(vocab)))
        hits = [(i, vocab[f]) for i, (p, _, _) in enumerate(chunk) for f in _features(p) if f in vocab]
        if hits:
            np.add.at(x, tuple(np.array(hits).T), 1.0)
        scores = x @ log_p.T + np.log(prior / prior.sum())
        right += [classes[k] == a for k, (_, a, _) in zip(scores.argmax(1), chunk)]
    return np.array(right)


def chance(task_choices: int | None, train, val) -> float:
    if task_choices:
        return 1.0 / task_choices
    answers: dict[str, Counter] = defaultdict(Counter)
    for _, a, t in train:
        answers[t][a] += 1
    # A yes/no template admits both answers, however its questions happen to be answered.
    k = {t: 2 if {"yes", "no"} & set(c) else sum(n >= 0.02 * sum(c.values()) for n in c.values())
         for t, c in answers.items()}
    return float(np.mean([1.0 / max(1, k.get(t, 1)) for _, _, t in val]))


def measure(root: Path, tasks=TASKS, scale: float = 1.0) -> dict[str, dict]:
    specs = load_tasks(REPO / "tasks", list(tasks), formats=FORMATS)
    stores = build_stores(root, [s.data for s in specs.values()], scale)
    cdc = codec()
    results = {}
    for name, spec in specs.items():
        meta = stores[spec.data, "train"].meta
        builder = blind_builder(spec, cdc, meta)
        train, val = examples(builder, stores[spec.data, "train"]), examples(builder, stores[spec.data, "val"])
        n_choices = None if name.startswith("vqa") else len(resolve_choices(spec.target, meta))
        p, b = prompt_baseline(train, val), bow_baseline(train, val)
        results[name] = {"chance": chance(n_choices, train, val), "prompt": p.mean(), "bow": b.mean(),
                         "train": len(train), "val": len(val)}
        if name.startswith("vqa"):  # per question type
            types = np.array([item["type"] for r in stores[spec.data, "val"] for item in builder.items(r)])
            results[name]["types"] = {
                qtype: {"chance": chance(None, train, [v for v, t in zip(val, types) if t == qtype]),
                        "prompt": p[types == qtype].mean(), "bow": b[types == qtype].mean(),
                        "val": int((types == qtype).sum())}
                for qtype in sorted(set(types))}
    return results


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    return measure(tmp_path_factory.mktemp("shortcuts"))


@pytest.mark.parametrize("task", TASKS)
def test_a_blind_model_stays_at_chance(measured, task):
    r = measured[task]
    assert r["val"] >= 250, r
    for baseline in ("prompt", "bow"):
        assert r[baseline] <= r["chance"] + MARGIN, (
            f"{task}: the {baseline} baseline, which never sees the image, scores {r[baseline]:.3f} on val "
            f"against chance {r['chance']:.3f}: {r}")
        for qtype, t in r.get("types", {}).items():  # VQA: no question type may hide a shortcut in the mean
            # A type has a few hundred val questions: allow 3.5 standard errors of a chance-level guess.
            margin = max(MARGIN, 3.5 * math.sqrt(t["chance"] * (1 - t["chance"]) / t["val"]))
            assert t[baseline] <= t["chance"] + margin, f"{task} {qtype} questions, {baseline} baseline: {t}"


if __name__ == "__main__":
    import argparse
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the store sizes")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    args = ap.parse_args()
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        res = measure(Path(tmp), args.tasks, args.scale)
    print(f"{'task':24s} {'chance':>7s} {'prompt':>7s} {'bow':>7s} {'n_train':>8s} {'n_val':>6s}")
    for task, r in res.items():
        print(f"{task:24s} {r['chance']:7.3f} {r['prompt']:7.3f} {r['bow']:7.3f} {r['train']:8d} {r['val']:6d}")
        for qtype, s in r.get("types", {}).items():
            print(f"  {qtype:22s} {s['chance']:7.3f} {s['prompt']:7.3f} {s['bow']:7.3f}")
    print(f"{time.time() - t0:.1f} s")
