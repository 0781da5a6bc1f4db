"""VQA v2 accuracy, with the answer normalisation of the VQA v2 evaluation.

Normalisation (applied to predictions and to every human answer; see `normalize_answer`), following
the steps the VQA evaluation page lists:
  1. lowercase; newlines and tabs become spaces;
  2. punctuation: a comma between digits is removed (``100,978`` -> ``100978``); a period is
     removed unless it is a decimal point (followed by a digit); every other punctuation mark
     except the apostrophe (possessives: ``girl's``) and the colon (times: ``2:30``) becomes a space;
  3. number words ``zero``..``ten`` (and ``none``) become digits;
  4. the articles ``a``, ``an``, ``the`` are removed;
  5. a contraction missing its apostrophe gets it back (``dont`` -> ``don't``), from a table of
     unambiguous forms; spellings that are also ordinary words (``its``, ``well``, ``shed``,
     ``ill``, ``wed``, ``hell``, ``lets``, ``were``, ``id``) are left alone.
One departure from the official script, on purpose: that script skips normalisation when all ten
human answers agree, so ``"yes."`` against ten ``"yes"`` scores 0 there; here it scores 1.

Accuracy of one question with ``n`` human answers (``matches(S)`` = answers in S equal to the
prediction after normalisation):
  * n >= 4 (VQA v2 has n = 10): the mean over the n leave-one-out subsets S of
    ``min(matches(S) / 3, 1)``, the official "10 choose 9" averaging;
  * n <= 3: 1 if the prediction equals any answer, else 0. (The 3-annotator formula cannot reach 1
    with fewer than four answers; small synthetic sets give one canonical answer.)

Keys: ``accuracy`` (mean over questions, in [0, 1]). Primary: ``accuracy``.
"""
from __future__ import annotations

import re
from typing import Any

from .base import Evaluator, as_text, as_texts
from .registry import register_evaluator

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})

# Apostrophe-less spelling -> contraction. Built from the English contractions of the VQA answer
# vocabulary; forms that are also ordinary words are omitted (see module docstring).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldntve": "couldn't've", "didnt": "didn't", "doesnt": "doesn't", "dont": "don't",
    "hadnt": "hadn't", "hadntve": "hadn't've", "hasnt": "hasn't", "havent": "haven't", "hed": "he'd",
    "hedve": "he'd've", "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's",
    "im": "i'm", "ive": "i've", "isnt": "isn't", "itd": "it'd", "itdve": "it'd've", "itll": "it'll",
    "maam": "ma'am", "mightnt": "mightn't", "mightntve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "shant": "shan't", "shedve": "she'd've",
    "shes": "she's", "shouldve": "should've", "shouldnt": "shouldn't", "shouldntve": "shouldn't've",
    "somebodyd": "somebody'd", "somebodydve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someonedve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingdve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "theredve": "there'd've", "therere": "there're", "theres": "there's",
    "theyd": "they'd", "theydve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wedve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whodve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldntve": "wouldn't've", "yall": "y'all",
    "youd": "you'd", "youdve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip

_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_NON_DECIMAL_PERIOD = re.compile(r"\.(?!\d)")
# Every ASCII punctuation mark except the apostrophe, the colon and the period (handled above).
_PUNCTUATION = re.compile(r"[!\"#$%&()*+,\-/;<=>?@\[\\\]^_`{|}~]")


def normalize_answer(answer: str) -> str:
    """The VQA v2 normal form of an answer (see the module docstring for the steps)."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    text = _DIGIT_COMMA.sub("", text)
    text = _NON_DECIMAL_PERIOD.sub("", text)
    text = _PUNCTUATION.sub(" ", text)
    words = []
    for word in text.split():
        word = NUMBER_WORDS.get(word, word)
        if word in ARTICLES:
            continue
        words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def vqa_score(prediction: str, answers: list[str]) -> float:
    """Accuracy of one prediction against the human answers (both normalised here)."""
    pred = normalize_answer(prediction)
    normed = [normalize_answer(a) for a in answers]
    if len(normed) <= 3:
        return float(pred in normed)
    hits = [a == pred for a in normed]
    total = sum(hits)
    # Leave answer i out: the others match (total - hits[i]) times.
    return sum(min((total - h) / 3.0, 1.0) for h in hits) / len(hits)


@register_evaluator("vqa_accuracy")
class VQAAccuracyEvaluator(Evaluator):
    primary = "accuracy"

    def _reset_state(self) -> None:
        self.total = 0.0

    def add(self, prediction: Any, reference: Any, *, image_id: Any = None) -> None:
        answers = as_texts(reference, metric="vqa_accuracy")
        self.total += vqa_score(as_text(prediction, metric="vqa_accuracy"), answers)
        self.count += 1

    def compute(self) -> dict[str, float]:
        self._require_examples()
        return {"accuracy": self.total / self.count}
