"""First-order token swaps: the HotFlip score used by AutoPrompt.

Swapping the token at prompt position i from e_i to the embedding E_w of token w changes the
loss by about (E_w - e_i) . g_i, with g_i = dL/de_i (a first-order Taylor expansion;
Ebrahimi et al. 2018). AutoPrompt (Shin et al. 2020, Eq. 2) ranks candidates by E_w . (-g_i)
and re-evaluates only the top ones. This module computes the ranking and, for checking it,
the exact loss of every single swap over a candidate set (an exhaustive search).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from gdlab.prompts.classifier import Inputs, PromptClassifier
from gdlab.runtime import check_int

__all__ = ["prompt_gradient", "first_order_scores", "swap_losses", "SwapTrial", "swap_trial", "spearman",
           "swap_study"]


def prompt_gradient(classifier: PromptClassifier, prompt_ids: Sequence[int], inputs: Inputs) -> torch.Tensor:
    """g = dL/de (p, d): gradient of the mean cross-entropy with respect to the prompt's token embeddings."""
    if len(prompt_ids) == 0:
        raise ValueError("parameter 'prompt_ids': got an empty prompt; a swap needs at least one token")
    embeds = classifier.encoder.E[torch.as_tensor(list(prompt_ids), device=classifier.device)].clone()
    embeds.requires_grad_(True)
    loss = classifier.loss(embeds[None], None, inputs).sum()
    (grad,) = torch.autograd.grad(loss, embeds)
    return grad


def first_order_scores(classifier: PromptClassifier, prompt_ids: Sequence[int], inputs: Inputs,
                       candidate_ids: torch.Tensor, grad: torch.Tensor | None = None) -> torch.Tensor:
    """Predicted loss decrease (p, n) of putting candidate w at position i: -(E_w - e_i) . g_i (Shin et al. 2020, Eq. 2)."""
    if grad is None:
        grad = prompt_gradient(classifier, prompt_ids, inputs)
    E = classifier.encoder.E
    current = E[torch.as_tensor(list(prompt_ids), device=E.device)]
    cand = E[candidate_ids.to(E.device)]
    return -(cand @ grad.T).T + (current * grad).sum(-1, keepdim=True)


@torch.no_grad()
def swap_losses(classifier: PromptClassifier, prompt_ids: Sequence[int], position: int,
                candidate_ids: torch.Tensor, inputs: Inputs, chunk: int = 64) -> torch.Tensor:
    """Exact mean loss (n,) after each single swap at ``position`` (exhaustive search, batched)."""
    position = check_int("position", position, min=0, max=len(prompt_ids) - 1)
    losses = []
    for start in range(0, len(candidate_ids), chunk):
        cands = candidate_ids[start:start + chunk].tolist()
        prompts = [list(prompt_ids[:position]) + [w] + list(prompt_ids[position + 1:]) for w in cands]
        embeds, mask = classifier.embed_prompts(prompts)
        losses.append(classifier.loss(embeds, mask, inputs))
    return torch.cat(losses)


@dataclass
class SwapTrial:
    """One check of the first-order ranking against exhaustive search at one position."""

    best_rank: int          # rank (0 = first) of the truly best swap in the first-order order
    hit: bool               # the truly best swap is in the first-order top k
    random_hit: bool        # ... in k candidates drawn at random instead
    best_gain: float        # true loss decrease of the best swap
    top_k_gain: float       # best true decrease among the first-order top k
    random_k_gain: float    # best true decrease among k random candidates
    spearman: float         # rank correlation of the first-order scores with the exact gains
    random_spearman: float  # ... of a random score (a random order) with the exact gains: the control


def swap_trial(classifier: PromptClassifier, prompt_ids: Sequence[int], position: int, candidate_ids: torch.Tensor,
               inputs: Inputs, k: int, generator: torch.Generator) -> SwapTrial:
    """Rank swaps by the first-order score, then compare with the exhaustive answer (AutoPrompt, Sec. 2.2):
    whether the best swap is in the top k, the regret of the top k, and the rank correlation of the whole
    order with the exact gains, each beside the same quantity for a random order."""
    k = check_int("k", k, min=1, max=len(candidate_ids))
    base = float(classifier.loss(*classifier.embed_prompts([prompt_ids]), inputs)[0].detach())
    scores = first_order_scores(classifier, prompt_ids, inputs, candidate_ids)[position].detach()
    gains = base - swap_losses(classifier, prompt_ids, position, candidate_ids, inputs)
    best = int(gains.argmax())
    order = scores.argsort(descending=True)
    rank = int((order == best).nonzero()[0, 0])
    perm = torch.randperm(len(candidate_ids), generator=generator, device=generator.device).to(gains.device)
    rand = perm[:k]
    return SwapTrial(rank, rank < k, bool((rand == best).any()), float(gains[best]),
                     float(gains[order[:k]].max()), float(gains[rand].max()),
                     spearman(scores, gains), spearman(perm.float(), gains))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two score vectors (Pearson's correlation of their ranks)."""
    ra = a.detach().flatten().argsort().argsort().double()
    rb = b.detach().flatten().argsort().argsort().double().to(ra.device)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def swap_study(classifier: PromptClassifier, inputs: Inputs, vocabulary: torch.Tensor, *, trials: int = 8,
               prompt_length: int = 4, candidates: int = 32, k: int = 4, batch_size: int = 12,
               generator: torch.Generator) -> list[SwapTrial]:
    """Repeat :func:`swap_trial` on random prompts, positions, candidate sets and minibatches."""
    trials = check_int("trials", trials, min=1)
    prompt_length = check_int("prompt_length", prompt_length, min=1)
    candidates = check_int("candidates", candidates, min=2, max=len(vocabulary))
    batch_size = check_int("batch_size", batch_size, min=1, max=len(inputs))
    out = []
    for _ in range(trials):
        draw = lambda n, size: torch.randperm(n, generator=generator, device=generator.device)[:size].cpu()
        prompt = tuple(vocabulary[draw(len(vocabulary), prompt_length)].tolist())
        cands = vocabulary[draw(len(vocabulary), candidates).to(vocabulary.device)]
        batch = inputs.take(draw(len(inputs), batch_size))
        position = int(draw(prompt_length, 1))
        out.append(swap_trial(classifier, prompt, position, cands, batch, k, generator))
    return out
