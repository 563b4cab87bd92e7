"""gdlab.prompts.encoder, .classifier and .tasks: the manual path equals model.encode, padding
is exact, splits are deterministic and disjoint."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from gdlab.prompts import tasks
from gdlab.prompts.classifier import PromptClassifier
from gdlab.prompts.encoder import Encoder, mean_pool


@pytest.fixture(scope="module")
def encoder():
    return Encoder.load("cpu")


def test_manual_path_equals_model_encode(encoder):
    texts = ["a delightful surprise", "terrible", "Numbers 42 and 1999.", "猫", ""]
    cos = (encoder.encode(texts) * encoder.encode_reference(texts)).sum(-1)
    assert cos.min() >= 0.9999


def test_padded_prompts_act_like_unpadded(encoder):
    clf = PromptClassifier(encoder, tasks.LABEL_TEXTS)
    data = clf.prepare(tasks.LabeledTexts(["good", "awful", "wonderful"], torch.tensor([1, 0, 1])))
    prompts = [encoder.token_ids("i feel"), encoder.token_ids("the sentiment of this word is"), []]
    together = clf.logits(*clf.embed_prompts(prompts), data)
    for k, p in enumerate(prompts):
        alone = clf.logits(*clf.embed_prompts([p]), data)[0]
        assert torch.allclose(together[k], alone, atol=1e-4)
    ids, mask = encoder.pad([[encoder.cls_id] + encoder.token_ids(t) + [encoder.sep_id] for t in ["i feel good"]])
    direct = encoder.encode_ids(ids, mask) @ clf.label_vectors.T / clf.tau
    assert torch.allclose(clf.logits(*clf.embed_prompts([encoder.token_ids("i feel")]),
                                     clf.prepare(tasks.LabeledTexts(["good"], torch.tensor([1]))))[0], direct, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_mean_pool_ignores_masked_positions(batch, length, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, length + 3, 5, generator=g)
    mask = torch.zeros(batch, length + 3, dtype=torch.long)
    mask[:, :length] = 1
    noisy = h.clone()
    noisy[:, length:] = 1e3
    assert torch.allclose(mean_pool(h, mask), mean_pool(noisy, mask))
    assert torch.allclose(mean_pool(h, mask), h[:, :length].mean(1), atol=1e-6)


def test_sentiment_splits_are_deterministic_and_disjoint():
    a, b = tasks.sentiment_words(40, 20, 30, seed=3), tasks.sentiment_words(40, 20, 30, seed=3)
    assert a.train.texts == b.train.texts and a.test.texts == b.test.texts
    sets = [set(s.texts) for s in (a.train, a.dev, a.test)]
    assert all(not (sets[i] & sets[j]) for i in range(3) for j in range(i + 1, 3))
    assert [len(s) for s in (a.train, a.dev, a.test)] == [40, 20, 30] and a.train.labels.sum() == 20
    assert a.train.texts != tasks.sentiment_words(40, 20, 30, seed=4).train.texts
    with pytest.raises(ValueError, match="n_train"):
        tasks.sentiment_words(100000, 10, 10)
    with pytest.raises(TypeError, match="n_dev"):
        tasks.sentiment_words(10, 2.5, 10)


@pytest.mark.parametrize("name", tasks.FEATURES)
def test_vocabulary_features(encoder, name):
    ids, y = tasks.vocabulary_feature(name, encoder.tokenizer, n_positive=12, n_negative=20, seed=0)
    assert len(ids) == 32 and int(y.sum()) == 12 and len(set(ids)) == 32
    instances = set(tasks.feature_instances(name, encoder.tokenizer))
    assert all(i in instances for i, lab in zip(ids, y.tolist()) if lab)
    assert not any(i in instances for i, lab in zip(ids, y.tolist()) if not lab)
    with pytest.raises(ValueError, match="name"):
        tasks.vocabulary_feature("colours", encoder.tokenizer)


def test_length_sorted_chunks_keep_the_original_order(encoder):
    clf = PromptClassifier(encoder, tasks.LABEL_TEXTS)
    texts = ["good", "unbelievably wonderful", "awful", "a", "heartbreakingly sad", "fine"]
    data = clf.prepare(tasks.LabeledTexts(texts, torch.tensor([1, 1, 0, 1, 0, 1])))
    rows = torch.cat([r for r, _ in data.chunks(4)])
    assert sorted(rows.tolist()) == list(range(len(texts)))
    lengths = data.mask.sum(1)[rows]
    assert torch.equal(lengths, lengths.sort().values)  # shortest first
    prompts = [encoder.token_ids("i feel"), encoder.token_ids("the sentiment of this word is"), []]
    embeds, mask = clf.embed_prompts(prompts)
    one_by_one = torch.stack([(clf.logits(embeds, mask, data.take(torch.tensor([i]))).argmax(-1)[:, 0]
                               == data.labels[i]).float() for i in range(len(texts))], dim=1)
    assert torch.equal(clf.correct(embeds, mask, data, max_sequences=6), one_by_one)
    texts_acc = clf.accuracy_of_texts(["i feel", "the sentiment of this word is", ""], data)
    assert torch.allclose(texts_acc, one_by_one.mean(1))


def test_load_changes_no_process_wide_setting(monkeypatch):
    """Encoder.load keeps the hub away with local_files_only on its own load (issue 19): it sets no
    environment variable and leaves huggingface_hub's offline switch as it found it."""
    import os

    import huggingface_hub.constants as hub

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    before = hub.HF_HUB_OFFLINE
    Encoder.load("cpu")
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
    assert hub.HF_HUB_OFFLINE == before
