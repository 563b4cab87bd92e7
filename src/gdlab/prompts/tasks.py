"""The chapter's offline tasks: VADER word sentiment and synthetic vocabulary features.

Everything here is deterministic given ``seed``: the same seed gives the same disjoint
train / dev / test splits on every machine.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from gdlab.data import vader_lexicon
from gdlab.runtime import check_choice, check_float, check_int, make_generator

__all__ = ["ANIMALS", "NUMBER_WORDS", "ACCEPTED_LABELS", "FEATURES", "LABEL_TEXTS", "FIRST_WORD_ID",
           "LabeledTexts", "TaskSplits", "sentiment_words", "whole_word_ids", "vocabulary_feature",
           "feature_instances"]

#: A committed list of common animals (all single WordPiece tokens in the uncased BERT vocabulary
#: are kept; the rest are dropped by ``vocabulary_feature``).
ANIMALS = (
    "dog cat horse cow pig sheep goat chicken duck goose turkey rabbit mouse rat hamster "
    "lion tiger leopard cheetah jaguar bear wolf fox deer moose elk bison buffalo camel "
    "llama zebra giraffe elephant rhino hippo monkey ape gorilla chimpanzee baboon kangaroo "
    "koala panda otter beaver squirrel badger raccoon skunk hedgehog bat whale dolphin seal "
    "walrus shark salmon trout cod tuna eel octopus squid crab lobster shrimp snail frog toad "
    "turtle tortoise lizard snake crocodile alligator eagle hawk falcon owl parrot pigeon "
    "crow raven swan penguin ostrich flamingo peacock sparrow robin bee wasp ant spider "
    "butterfly moth beetle mosquito fly worm donkey mule pony ox bird fish"
).split()

NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety "
    "hundred hundreds thousand thousands million millions billion billions dozen dozens first "
    "second third fourth fifth sixth seventh eighth ninth tenth"
).split()

# Labels a reader would accept for each feature (fixed before any run; claim C4).
ACCEPTED_LABELS = {
    "numbers": {"number", "numbers", "numeral", "numerals", "numeric", "numerical", "digit", "digits",
                "integer", "integers", "figure", "figures", "count", "counting"},
    "animals": {"animal", "animals", "mammal", "mammals", "species", "creature", "creatures", "wildlife",
                "beast", "beasts", "fauna", "pet", "pets", "zoo", "wild", "predator", "predators"},
    "cjk": {"chinese", "japanese", "kanji", "character", "characters", "han", "mandarin", "cantonese",
            "korean", "asian", "china", "japan", "hanzi", "calligraphy", "ideogram", "script"},
}
FEATURES = tuple(ACCEPTED_LABELS)
LABEL_TEXTS = ("negative", "positive")
FIRST_WORD_ID = 1996  # ids below are [PAD]/[unused]/special/single characters in BERT's vocabulary


@dataclass
class LabeledTexts:
    """Texts with integer class labels."""

    texts: list[str]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index) -> "LabeledTexts":
        index = [int(i) for i in index]
        return LabeledTexts([self.texts[i] for i in index], self.labels[index])


@dataclass
class TaskSplits:
    """Disjoint train / dev / test splits and the class names."""

    train: LabeledTexts
    dev: LabeledTexts
    test: LabeledTexts
    label_texts: tuple[str, ...]


def sentiment_words(n_train: int = 256, n_dev: int = 128, n_test: int = 256, *, min_abs: float = 1.0,
                    seed: int = 0) -> TaskSplits:
    """Binary word sentiment from the VADER lexicon (Hutto & Gilbert 2014).

    Alphabetic lexicon words whose mean human rating has ``|mean| >= min_abs``; label 1 when
    the rating is positive. Each split is class-balanced and the splits are disjoint.
    """
    for name, v in (("n_train", n_train), ("n_dev", n_dev), ("n_test", n_test)):
        check_int(name, v, min=2)
    min_abs = check_float("min_abs", min_abs, min=0.0, max=3.5)
    seed = check_int("seed", seed, min=0)
    lexicon = vader_lexicon()
    words = sorted(w for w, (mean, _) in lexicon.items() if re.fullmatch(r"[a-z]+", w) and abs(mean) >= min_abs)
    by_class = [[w for w in words if (lexicon[w][0] > 0) == bool(c)] for c in (0, 1)]
    sizes = (n_train, n_dev, n_test)
    need = [(n + 1) // 2 for n in sizes]
    if sum(need) > min(len(c) for c in by_class):
        raise ValueError(f"parameters n_train + n_dev + n_test = {sum(sizes)}: too many; at most "
                         f"{2 * min(len(c) for c in by_class)} balanced words have |rating| >= {min_abs}")
    g = make_generator(seed)
    shuffled = [[c[i] for i in torch.randperm(len(c), generator=g)] for c in by_class]
    splits, start = [], 0
    for n in sizes:
        half = [n // 2, n - n // 2]
        items = [(w, c) for c in (0, 1) for w in shuffled[c][start:start + half[c]]]
        order = torch.randperm(len(items), generator=g)
        items = [items[i] for i in order]
        splits.append(LabeledTexts([w for w, _ in items], torch.tensor([c for _, c in items])))
        start += max(half)
    return TaskSplits(*splits, label_texts=LABEL_TEXTS)


def whole_word_ids(tokenizer, *, min_letters: int = 3) -> list[int]:
    """Ids of ASCII alphabetic whole-word tokens (no '##' pieces, no specials) of >= min_letters letters."""
    vocab = tokenizer.get_vocab()
    return sorted(i for t, i in vocab.items()
                  if i >= FIRST_WORD_ID and len(t) >= min_letters and re.fullmatch(r"[a-z]+", t))


def vocabulary_feature(name: str, tokenizer, *, n_positive: int = 48, n_negative: int = 96,
                       seed: int = 0) -> tuple[list[int], torch.Tensor]:
    """Token ids and 0/1 labels of one synthetic vocabulary feature (Schulz & Fallows 2025, Sec. 4).

    ``"numbers"``: digit tokens, balanced over 1- to 4-digit lengths; ``"cjk"``: single CJK
    characters; ``"animals"``: the committed :data:`ANIMALS` list. Negatives are random
    alphabetic whole words that are not positives.
    """
    check_choice("name", name, FEATURES)
    n_positive = check_int("n_positive", n_positive, min=2)
    n_negative = check_int("n_negative", n_negative, min=2)
    g = make_generator(check_int("seed", seed, min=0))
    vocab = tokenizer.get_vocab()
    if name == "numbers":
        groups = [[i for t, i in vocab.items() if re.fullmatch(r"\d{%d}" % k, t)] for k in (1, 2, 3, 4)]
    elif name == "cjk":
        groups = [[i for t, i in vocab.items() if len(t) == 1 and "\u4e00" <= t <= "\u9fff"]]
    else:
        groups = [[vocab[a] for a in ANIMALS if a in vocab]]
    positives = []
    per_group = -(-n_positive // len(groups))
    for grp in groups:
        grp = sorted(grp)
        positives += [grp[i] for i in torch.randperm(len(grp), generator=g)[:per_group]]
    positives = positives[:n_positive]
    excluded = set(positives) | {vocab[a] for a in ANIMALS if a in vocab}
    pool = [i for i in whole_word_ids(tokenizer) if i not in excluded]
    negatives = [pool[i] for i in torch.randperm(len(pool), generator=g)[:n_negative]]
    ids = positives + negatives
    labels = torch.tensor([1] * len(positives) + [0] * len(negatives))
    return ids, labels


def feature_instances(name: str, tokenizer) -> list[int]:
    """Vocabulary ids that are *instances* of a feature (a label must name the feature, not list a member):
    digit tokens and number words for "numbers", the animal list and its plurals for "animals",
    CJK characters for "cjk"."""
    check_choice("name", name, FEATURES)
    vocab = tokenizer.get_vocab()
    if name == "numbers":
        return [i for t, i in vocab.items() if re.fullmatch(r"\d+", t)] + [vocab[w] for w in NUMBER_WORDS if w in vocab]
    if name == "animals":
        return [vocab[w] for a in ANIMALS for w in (a, a + "s", a + "es") if w in vocab]
    return [i for t, i in vocab.items() if len(t) == 1 and "\u4e00" <= t <= "\u9fff"]
