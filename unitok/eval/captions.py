"""Caption metrics via pycocoevalcap: BLEU-1..4, CIDEr(-D), ROUGE-L, optionally METEOR.

``add(Text, references: list[str])``; one ``add`` per image. The scores are corpus-level, exactly as
the COCO caption evaluation computes them. Two consequences worth knowing:

* CIDEr weights n-grams by their inverse document frequency over the *references of the whole
  evaluation set*; with a single image every n-gram occurs in every "document", so CIDEr is 0.
  Evaluate on a set, not an example.
* BLEU-4 needs 4-grams: a caption shorter than four tokens scores (near) 0 even when correct.

Tokenization (``tokenizer`` option):
* ``"ptb"``: the Stanford PTB tokenizer jar shipped inside pycocoevalcap (needs ``java``), with the
  punctuation list of pycocoevalcap's `PTBTokenizer`, i.e. the official COCO pipeline. It is invoked
  on stdin rather than through the wrapper class because the wrapper writes a temporary file into
  site-packages (fails on read-only installs) and lets Java chatter on stderr.
* ``"simple"``: lowercase, split into alphanumeric runs, keep clitics as their own token
  (``dog's`` -> ``dog 's``) and drop punctuation. Close to PTB for plain captions; it differs on
  ``n't`` (``don't`` -> ``don 't`` instead of ``do n't``), hyphenation and numbers with separators.
* ``"auto"`` (default): PTB when Java is found and the jar runs, else simple (logged once).

``meteor=True`` adds METEOR 1.5 (Java; the paraphrase table ships with pycocoevalcap, so it runs
offline). Off by default: its JVM loads a 2 GB heap and takes ~15 s to start. If Java is missing
or the jar fails, the ``meteor`` key is left out with a warning.

Keys: ``bleu1``..``bleu4``, ``cider``, ``rouge_l`` (+ ``meteor``). Primary: ``cider``.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from typing import Any

from .base import Evaluator, as_text, as_texts
from .registry import register_evaluator

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"[a-z0-9]+|'[a-z]+")


def simple_tokenize(text: str) -> str:
    """Lowercased tokens joined by spaces, punctuation dropped (the fallback when Java is absent)."""
    return " ".join(_TOKEN.findall(text.lower()))


def ptb_tokenize(texts: list[str], *, timeout: float = 300.0) -> list[str]:
    """Tokenize with pycocoevalcap's Stanford PTB jar: one output line per input line."""
    from pycocoevalcap.tokenizer import ptbtokenizer  # here: loading the metric registry should not load pycocoevalcap

    jar_dir = os.path.dirname(os.path.abspath(ptbtokenizer.__file__))
    jar = os.path.join(jar_dir, ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR)
    lines = "\n".join(t.replace("\n", " ").replace("\r", " ") for t in texts)
    proc = subprocess.run(
        ["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"],
        input=lines.encode(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        timeout=timeout,
        check=True,
    )
    out = proc.stdout.decode().split("\n")
    # The jar drops nothing but may leave a trailing empty line; empty inputs come back as empty lines.
    out = (out + [""] * len(texts))[: len(texts)]
    punctuation = set(ptbtokenizer.PUNCTUATIONS)
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in punctuation) for line in out]


_JAVA_WARNED = False


def tokenize(texts: list[str], mode: str) -> list[str]:
    global _JAVA_WARNED
    if mode == "simple":
        return [simple_tokenize(t) for t in texts]
    if mode == "ptb" or shutil.which("java"):
        try:
            return ptb_tokenize(texts)
        except (OSError, subprocess.SubprocessError) as err:
            if mode == "ptb":
                raise RuntimeError(f"caption: the PTB tokenizer (java) failed: {err}") from err
            if not _JAVA_WARNED:
                log.warning("caption: PTB tokenizer failed (%s); using the simple tokenizer", err)
                _JAVA_WARNED = True
    elif not _JAVA_WARNED:
        log.warning("caption: java not found; using the simple tokenizer instead of PTB")
        _JAVA_WARNED = True
    return [simple_tokenize(t) for t in texts]


@register_evaluator("caption")
class CaptionEvaluator(Evaluator):
    primary = "cider"

    def __init__(self, *, tokenizer: str = "auto", meteor: bool = False):
        if tokenizer not in ("auto", "ptb", "simple"):
            raise ValueError(f"caption: tokenizer must be 'auto', 'ptb' or 'simple', got {tokenizer!r}")
        self.tokenizer = tokenizer
        self.meteor = meteor
        super().__init__()

    def _reset_state(self) -> None:
        self.predictions: list[str] = []
        self.references: list[list[str]] = []

    def add(self, prediction: Any, reference: Any, *, image_id: Any = None) -> None:
        self.predictions.append(as_text(prediction, metric="caption"))
        self.references.append(as_texts(reference, metric="caption"))
        self.count += 1

    def compute(self) -> dict[str, float]:
        self._require_examples()
        # Tokenize everything in one call: one JVM start for the whole set.
        flat = self.predictions + [r for refs in self.references for r in refs]
        tokens = tokenize(flat, self.tokenizer)
        res, gts, pos = {}, {}, len(self.predictions)
        for i, refs in enumerate(self.references):
            res[i] = [tokens[i]]
            gts[i] = tokens[pos : pos + len(refs)]
            pos += len(refs)

        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        cider, _ = Cider().compute_score(gts, res)
        rouge, _ = Rouge().compute_score(gts, res)
        out = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
        out.update(cider=float(cider), rouge_l=float(rouge))
        if self.meteor:
            score = _meteor(gts, res)
            if score is not None:
                out["meteor"] = score
        return out


def _meteor(gts: dict, res: dict) -> float | None:
    if not shutil.which("java"):
        log.warning("caption: java not found; METEOR skipped")
        return None
    try:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            score, _ = scorer.compute_score(gts, res)
        finally:
            del scorer  # stops the JVM
        return float(score)
    except Exception as err:  # the jar's failure modes are many (heap, IO); METEOR is optional
        log.warning("caption: METEOR failed (%s); skipped", err)
        return None
