"""The prompt-conditioned classifier that every optimizer in the chapter tunes.

For a prompt P (p embedding vectors) and an input x, the class scores are

    s_c(P, x) = cos(enc([CLS] P x [SEP]), enc(label_c)) / tau,

a zero-shot "retrieval" classifier in the style of sentence-embedding label matching. The
label vectors enc(label_c) do not depend on the prompt, so they are encoded once and cached;
only the prompted inputs go through the encoder (and its backward pass) at every step.
Several prompts are evaluated as one batch: prompts of different lengths are padded and
masked, and explicit position ids make a padded prompt act exactly like the unpadded one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from gdlab.prompts.encoder import Encoder
from gdlab.prompts.tasks import LabeledTexts
from gdlab.runtime import check_float, check_int, check_sequence

__all__ = ["Inputs", "PromptClassifier"]


@dataclass
class Inputs:
    """Tokenized inputs: ids of ``x [SEP]`` right-padded (N, L), their mask, and labels (N,)."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.ids.shape[0]

    def take(self, index: torch.Tensor) -> "Inputs":
        index = index.to(self.ids.device)
        ids, mask = self.ids[index], self.mask[index]
        width = max(int(mask.sum(1).max()), 1)
        return Inputs(ids[:, :width], mask[:, :width], self.labels[index])

    def chunks(self, size: int):
        """Yield (rows, inputs[rows]) in chunks of <= ``size``, shortest inputs first, so that a chunk is
        padded only to its own longest input (most words are 1-2 word pieces, a few 5-8)."""
        order = self.mask.sum(1).cpu().argsort(stable=True)
        for start in range(0, len(self), size):
            rows = order[start:start + size]
            yield rows, self.take(rows)


class PromptClassifier:
    """cos(enc([CLS] P x [SEP]), enc(label_c)) / tau with the encoder frozen."""

    def __init__(self, encoder: Encoder, label_texts: Sequence[str], tau: float = 0.05,
                 max_input_tokens: int = 8):
        self.encoder = encoder
        self.label_texts = tuple(check_sequence("label_texts", list(label_texts), _check_str, min_len=2))
        self.tau = check_float("tau", tau, min=0.0, open_min=True)
        self.max_input_tokens = check_int("max_input_tokens", max_input_tokens, min=1)
        self.label_vectors = encoder.encode(self.label_texts)  # cached: independent of the prompt

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def prepare(self, data: LabeledTexts) -> Inputs:
        """Tokenize once: ``x [SEP]`` (x truncated to ``max_input_tokens`` word pieces)."""
        enc = self.encoder
        ids, mask = enc.pad([enc.token_ids(t)[:self.max_input_tokens] + [enc.sep_id] for t in data.texts])
        return Inputs(ids, mask, data.labels.to(self.device))

    def embed_prompts(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Discrete prompts (token-id lists, possibly empty) -> padded embeddings (K, p, d) and mask (K, p)."""
        length = max(len(p) for p in prompts)
        d = self.encoder.E.shape[1]
        embeds = torch.zeros(len(prompts), length, d, device=self.device, dtype=self.encoder.E.dtype)
        mask = torch.zeros(len(prompts), length, dtype=torch.long, device=self.device)
        for k, p in enumerate(prompts):
            if len(p):
                embeds[k, :len(p)] = self.encoder.E[torch.as_tensor(list(p), device=self.device)]
                mask[k, :len(p)] = 1
        return embeds, mask

    def logits(self, prompt: torch.Tensor, prompt_mask: torch.Tensor | None, inputs: Inputs) -> torch.Tensor:
        """Class scores (K, B, C) of K prompts (K, p, d) on a batch of B inputs."""
        z = self.embed(prompt, prompt_mask, inputs)
        return z @ self.label_vectors.T / self.tau

    def embed(self, prompt: torch.Tensor, prompt_mask: torch.Tensor | None, inputs: Inputs) -> torch.Tensor:
        """Unit sentence vectors enc([CLS] P x [SEP]) (K, B, d) of K prompts (K, p, d) on B inputs."""
        K, p, d = prompt.shape
        B = len(inputs)
        if prompt_mask is None:
            prompt_mask = torch.ones(K, p, dtype=torch.long, device=prompt.device)
        E = self.encoder.E
        cls = E[self.encoder.cls_id].expand(K, B, 1, d)
        x = E[inputs.ids].expand(K, B, -1, d)
        embeds = torch.cat([cls, prompt.unsqueeze(1).expand(K, B, p, d), x], dim=2).reshape(K * B, -1, d)
        ones = torch.ones(K, B, 1, dtype=torch.long, device=prompt.device)
        mask = torch.cat([ones, prompt_mask.unsqueeze(1).expand(K, B, p), inputs.mask.expand(K, B, -1)], dim=2)
        mask = mask.reshape(K * B, -1)
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        return self.encoder.encode_embeds(embeds, mask, positions).reshape(K, B, -1)

    def loss(self, prompt, prompt_mask, inputs: Inputs) -> torch.Tensor:
        """Mean cross-entropy per prompt (K,)."""
        logits = self.logits(prompt, prompt_mask, inputs)
        y = inputs.labels.expand(logits.shape[0], -1)
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none") \
            .reshape(logits.shape[:2]).mean(1)

    @torch.no_grad()
    def correct(self, prompt, prompt_mask, inputs: Inputs, max_sequences: int = 1024) -> torch.Tensor:
        """0/1 correctness (K, N) of each prompt on each input, in chunks of <= max_sequences (sorted by length)."""
        K = prompt.shape[0]
        out = torch.empty(K, len(inputs), device=self.device)
        for rows, part in inputs.chunks(max(1, max_sequences // K)):
            out[:, rows.to(self.device)] = (self.logits(prompt, prompt_mask, part).argmax(-1) == part.labels).float()
        return out

    def accuracy(self, prompt, prompt_mask, inputs: Inputs) -> torch.Tensor:
        """Accuracy (K,) of K prompts."""
        return self.correct(prompt, prompt_mask, inputs).mean(1)

    def accuracy_of_texts(self, texts: Sequence[str], inputs: Inputs) -> torch.Tensor:
        """Accuracy (K,) of written prompts ("" means no prompt).

        Prompts of equal length are evaluated together: a batch pads every prompt to its longest."""
        prompts = [self.encoder.token_ids(t) for t in texts]
        out = torch.empty(len(prompts), device=self.device)
        for length in sorted(set(map(len, prompts))):
            group = [k for k, p in enumerate(prompts) if len(p) == length]
            out[group] = self.accuracy(*self.embed_prompts([prompts[k] for k in group]), inputs)
        return out


def _check_str(name, value):
    if not isinstance(value, str) or not value:
        raise TypeError(f"parameter {name!r}: got {value!r}; expected a non-empty string")
    return value
