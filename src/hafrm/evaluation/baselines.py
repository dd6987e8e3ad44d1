"""Shortcut baselines that never read the prompt: if they score well, the task has a surface cue."""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from hafrm.data.types import PreferencePair
from hafrm.objectives.accuracy import accuracy

_WORD = re.compile(r"\w+")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShortcutReport:
    """Test accuracy of response-only shortcuts; near 0.5 means no surface cue separates the pair.

    `length_longer` prefers the longer response (characters), `length_shorter` the shorter one,
    `bag_of_words` is a word-unigram logistic regression trained on the train pairs.
    """

    length_longer: float
    length_shorter: float
    bag_of_words: float


def length_baseline_accuracy(pairs: Sequence[PreferencePair]) -> float:
    """Accuracy of "prefer the longer response" (characters); a tie counts as half right."""
    if not pairs:
        raise ValueError("length_baseline_accuracy needs at least one pair")
    return float(np.mean([accuracy(len(p.chosen), len(p.rejected)) for p in pairs]))


def _difference(pair: PreferencePair) -> dict[str, int]:
    """Word counts of the chosen minus those of the rejected response, zeros left out."""
    diff = Counter(_WORD.findall(pair.chosen))
    diff.subtract(Counter(_WORD.findall(pair.rejected)))
    return {word: count for word, count in diff.items() if count}


@dataclasses.dataclass(frozen=True)
class _Sparse:
    """A (B, V) matrix as its non-zero entries; a pair's difference has only a few words.

    Products go through `np.bincount`, not BLAS: on a busy CPU, multi-threaded BLAS spends more
    time starting threads for these tiny products than computing them.
    """

    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    shape: tuple[int, int]

    def __matmul__(self, w: np.ndarray) -> np.ndarray:  # (B, V) @ (V,) -> (B,)
        return np.bincount(self.rows, self.vals * w[self.cols], minlength=self.shape[0])

    def t_matmul(self, r: np.ndarray) -> np.ndarray:  # (V, B) @ (B,) -> (V,)
        return np.bincount(self.cols, self.vals * r[self.rows], minlength=self.shape[1])


def _differences(pairs: Sequence[PreferencePair], vocab: dict[str, int]) -> _Sparse:
    """`_difference` of every pair over `vocab`; words outside it are dropped."""
    rows, cols, vals = [], [], []
    for row, pair in enumerate(pairs):
        for word, count in _difference(pair).items():
            if word in vocab:
                rows.append(row)
                cols.append(vocab[word])
                vals.append(count)
    as_int = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)
    return _Sparse(*as_int, np.array(vals, dtype=np.float64), (len(pairs), len(vocab)))


def bag_of_words_accuracy(
    train_pairs: Sequence[PreferencePair],
    test_pairs: Sequence[PreferencePair],
    seed: int = 0,
    steps: int = 300,
    lr: float = 0.5,
    l2: float = 1e-3,
) -> float:
    """Test accuracy of a logistic regression on response word counts, trained on train pairs.

    Each train pair is shown in a random order, (chosen, rejected) with label 1 or (rejected,
    chosen) with label 0, as the feature vector bow(first) - bow(second) of case-sensitive word
    unigrams. There is no bias: swapping the two responses must flip the prediction. Words that
    cancel within every train pair are left out of the vocabulary; their weight would stay 0
    anyway. A test pair scored 0 (e.g. only unseen words differ) counts as half right.
    """
    if not train_pairs or not test_pairs:
        raise ValueError("bag_of_words_accuracy needs train and test pairs")
    words = sorted({word for pair in train_pairs for word in _difference(pair)})
    vocab = {word: i for i, word in enumerate(words)}
    rng = random.Random(seed)
    signs = np.array([rng.choice((-1.0, 1.0)) for _ in train_pairs])
    x = _differences(train_pairs, vocab)  # (B, V)
    x = dataclasses.replace(x, vals=x.vals * signs[x.rows])
    y = (signs > 0).astype(np.float64)
    w = np.zeros(len(vocab))
    for _ in range(steps):
        p = 0.5 * (1.0 + np.tanh(0.5 * (x @ w)))  # sigmoid, without overflow for large logits
        w -= lr * (x.t_matmul(p - y) / len(y) + l2 * w)
    scores = _differences(test_pairs, vocab) @ w
    scores[np.abs(scores) < 1e-9] = 0.0  # rounding, not evidence: mirrored pairs cancel exactly
    return float(np.mean(accuracy(scores, 0.0)))


def shortcut_report(train_pairs: Sequence[PreferencePair], test_pairs: Sequence[PreferencePair]) -> ShortcutReport:
    """Both length shortcuts on the test pairs; bag-of-words trained on train, tested on test."""
    longer = length_baseline_accuracy(test_pairs)
    return ShortcutReport(
        length_longer=longer,
        length_shorter=1.0 - longer,
        bag_of_words=bag_of_words_accuracy(train_pairs, test_pairs),
    )
