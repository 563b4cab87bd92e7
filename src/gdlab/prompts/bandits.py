"""Best-arm identification for prompt selection: which b of n candidate prompts are best?

APO (Pryzant et al. 2023, Sec. 2.2 and Table 2) treats each candidate prompt as an arm; a pull
evaluates the prompt on a fresh minibatch of ``samples_per_pull`` examples, and the budget
counts evaluated examples. The selectors:

- ``uniform``: every arm gets the same number of pulls;
- ``ucb``: each round pull the ``arms_per_round`` arms with the largest mean + c sqrt(log t / n_i)
  (Auer et al. 2002, as used by APO); every arm is pulled once before the bonus applies (unpulled
  arms first, in a random order drawn from the selector's generator);
- ``ucb-e``: the bonus is sqrt(a / n_i) with a fixed exploration constant (Audibert et al. 2010);
- ``successive-rejects``: phases of n_k = ceil((T' - n) / (logbar(n) (n + 1 - k))) pulls per surviving
  arm, dropping the worst arm after each (Audibert & Bubeck 2010). Stopping once b arms remain
  and the ceilings make the true spend differ from the schedule's T', so T' is chosen as the
  largest value whose true spend fits the budget (:func:`successive_rejects_fit`); the spend is reported;
- ``successive-halving``: ceil(log2(n / b)) rounds that split the budget equally and keep the
  better half (Karnin et al. 2013).

Everything is vectorized over independent repetitions (``reps``), so simulated studies with
hundreds of repetitions cost one tensor program per pull.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from gdlab.runtime import check_choice, check_float, check_int

__all__ = ["SELECTORS", "Selection", "log_bar", "successive_rejects_schedule", "successive_rejects_spend",
           "successive_rejects_fit", "select_top", "top_b_recall", "bernoulli_arms", "table_arms",
           "recall_study", "recall_gain"]

SELECTORS = ("uniform", "ucb", "ucb-e", "successive-rejects", "successive-halving")

PullFn = Callable[[torch.Tensor], torch.Tensor]  # arms (reps, k) -> mean reward of one pull each (reps, k)


@dataclass
class Selection:
    """The chosen top-b arms (reps, b), the pulls per arm (reps, n), and the examples spent (reps,)."""

    top: torch.Tensor
    pulls: torch.Tensor
    means: torch.Tensor
    spend: torch.Tensor
    budget: int


class _Tally:
    """Running sums and counts of rewards, per repetition and arm."""

    def __init__(self, reps: int, n: int, pull: PullFn, samples_per_pull: int):
        self.sums = torch.zeros(reps, n)
        self.counts = torch.zeros(reps, n)
        self._pull, self.m = pull, samples_per_pull

    def pull(self, arms: torch.Tensor) -> None:
        rewards = self._pull(arms).float().cpu()
        self.sums.scatter_add_(1, arms.cpu(), rewards)
        self.counts.scatter_add_(1, arms.cpu(), torch.ones_like(rewards))

    @property
    def means(self) -> torch.Tensor:
        return torch.where(self.counts > 0, self.sums / self.counts.clamp_min(1), torch.full_like(self.sums, -math.inf))

    def result(self, top: torch.Tensor, budget: int) -> Selection:
        return Selection(top, self.counts.long(), self.means, (self.counts.sum(1) * self.m).long(), budget)


def log_bar(n: int) -> float:
    """logbar(n) = 1/2 + sum_{i=2}^n 1/i (Audibert & Bubeck 2010, Sec. 3)."""
    return 0.5 + sum(1.0 / i for i in range(2, n + 1))


def successive_rejects_schedule(n: int, total_pulls: int, b: int = 1) -> list[int]:
    """Cumulative pulls n_k per surviving arm in phases k = 1..n-b (Audibert & Bubeck 2010, Eq. before Thm. 2)."""
    return [math.ceil((total_pulls - n) / (log_bar(n) * (n + 1 - k))) for k in range(1, n - b + 1)]


def successive_rejects_spend(n: int, total_pulls: int, b: int = 1) -> int:
    """Pulls successive rejects really makes (it is not exactly ``total_pulls``)."""
    sched, prev, spent = successive_rejects_schedule(n, total_pulls, b), 0, 0
    for k, nk in enumerate(sched, start=1):
        spent += (n + 1 - k) * max(nk - prev, 0)
        prev = max(nk, prev)
    return spent


def successive_rejects_fit(n: int, budget_pulls: int, b: int = 1) -> int:
    """The largest schedule total T' whose true spend (:func:`successive_rejects_spend`) is at most
    ``budget_pulls``; 0 when even the smallest schedule does not fit."""
    lo, hi = n, max(n, 4 * budget_pulls + 4 * n)   # spend(T') grows with T' (each n_k does)
    if successive_rejects_spend(n, lo + 1, b) > budget_pulls:
        return 0
    while lo < hi:                                    # largest T' with spend(T') <= budget
        mid = (lo + hi + 1) // 2
        if successive_rejects_spend(n, mid, b) <= budget_pulls:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _random_order(scores: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Indices (reps, k) of the k largest ``scores`` per row, ties (``inf`` included) broken at random."""
    perm = torch.rand(scores.shape, generator=generator, device=generator.device).cpu().argsort(dim=1)
    order = scores.gather(1, perm).sort(dim=1, descending=True, stable=True).indices[:, :k]
    return perm.gather(1, order)


def select_top(selector: str, pull: PullFn, num_arms: int, b: int, budget: int, *, reps: int = 1,
               samples_per_pull: int = 32, arms_per_round: int | None = None, c: float | None = None,
               exploration: float | None = None, generator: torch.Generator | None = None) -> Selection:
    """Spend about ``budget`` example evaluations to pick the top ``b`` of ``num_arms`` arms.

    ``pull(arms)`` evaluates each listed arm on one fresh minibatch and returns its mean reward.
    ``arms_per_round`` is how many arms UCB/UCB-E pull per round (APO's eval_prompts_per_round).
    A pull averages m = ``samples_per_pull`` rewards in [0, 1], so its noise is sigma <= 1 / (2 sqrt(m)).
    The default bonuses use that scale: UCB's c = sigma sqrt(2) (UCB1, Auer et al. 2002) and UCB-E's
    a = 2 sigma^2 log T for a horizon of T pulls (Audibert et al. 2010 leave a as a tuning constant).
    ``generator`` (CPU) breaks ties at random, among them the order in which UCB pulls its unpulled
    arms; None means a generator seeded with 0 (results stay deterministic).
    """
    check_choice("selector", selector, SELECTORS)
    n = check_int("num_arms", num_arms, min=1)
    b = check_int("b", b, min=1, max=n)
    reps = check_int("reps", reps, min=1)
    m = check_int("samples_per_pull", samples_per_pull, min=1)
    budget = check_int("budget", budget, min=m)
    sigma = 0.5 / math.sqrt(m)
    c = sigma * math.sqrt(2) if c is None else check_float("c", c, min=0.0)
    k = n if arms_per_round is None else check_int("arms_per_round", arms_per_round, min=1)
    k = min(k, n)
    T = budget // m                                  # pulls the budget allows
    a = 2 * sigma**2 * math.log(max(T, 2)) if exploration is None else check_float("exploration", exploration, min=0.0)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    tally = _Tally(reps, n, pull, m)
    every = torch.arange(n).expand(reps, n)
    if selector == "uniform":
        if T < n:
            raise ValueError(f"parameter 'budget': got {budget}; uniform needs at least num_arms * samples_per_pull = {n * m}")
        for _ in range(T // n):
            tally.pull(every)
        return tally.result(_random_order(tally.means, b, generator), budget)
    if selector in ("ucb", "ucb-e"):
        for _ in range(max(T // k, 1)):
            counts = tally.counts
            if selector == "ucb":
                bonus = c * torch.sqrt(math.log(counts.sum(1, keepdim=True).clamp_min(1).max()) / counts.clamp_min(1))
            else:
                bonus = torch.sqrt(a / counts.clamp_min(1))
            # unpulled arms score +inf: each is pulled once before any bonus counts, in random order
            score = torch.where(counts > 0, tally.means + bonus, torch.full_like(bonus, math.inf))
            tally.pull(_random_order(score, k, generator))
        return tally.result(_random_order(tally.means, b, generator), budget)
    alive = every.clone()
    if selector == "successive-rejects":
        if T <= n:
            raise ValueError(f"parameter 'budget': got {budget}; successive rejects needs more than num_arms * samples_per_pull = {n * m}")
        T_fit = successive_rejects_fit(n, T, b)
        if T_fit <= n:
            raise ValueError(f"parameter 'budget': got {budget}; too small for successive rejects over {n} arms")
        prev = 0
        for nk in successive_rejects_schedule(n, T_fit, b):
            for _ in range(max(nk - prev, 0)):
                tally.pull(alive)
            prev = max(prev, nk)
            means = tally.means.gather(1, alive)
            alive = alive.gather(1, _random_order(means, alive.shape[1] - 1, generator))
        return tally.result(alive, budget)
    rounds = max(1, math.ceil(math.log2(n / b)))
    for _ in range(rounds):                                     # successive halving
        per_arm = T // (alive.shape[1] * rounds)
        if per_arm < 1:
            raise ValueError(f"parameter 'budget': got {budget}; too small for successive halving over {n} arms")
        for _ in range(per_arm):
            tally.pull(alive)
        keep = max(b, math.ceil(alive.shape[1] / 2))
        alive = alive.gather(1, _random_order(tally.means.gather(1, alive), keep, generator))
    return tally.result(alive.gather(1, _random_order(tally.means.gather(1, alive), b, generator)), budget)


def top_b_recall(selected: torch.Tensor, true_means: torch.Tensor, b: int) -> torch.Tensor:
    """Fraction (reps,) of the true top-b arms that the selection contains."""
    truth = true_means.topk(b, dim=-1).indices.expand(selected.shape[0], -1)
    return (selected.unsqueeze(-1) == truth.unsqueeze(-2)).any(-1).float().mean(-1)


def bernoulli_arms(means: torch.Tensor, samples_per_pull: int, generator: torch.Generator) -> PullFn:
    """Simulated arms: a pull is the mean of ``samples_per_pull`` Bernoulli(mu_i) draws; means (reps, n)."""
    def pull(arms):
        mu = means.gather(1, arms)
        draws = torch.rand(*arms.shape, samples_per_pull, generator=generator, device=generator.device)
        return (draws.to(mu.device) < mu.unsqueeze(-1)).float().mean(-1)
    return pull


def table_arms(correct: torch.Tensor, reps: int, samples_per_pull: int, generator: torch.Generator,
               shared: bool = False) -> PullFn:
    """Arms backed by a precomputed 0/1 table (n arms, N examples). A pull scores an arm on
    ``samples_per_pull`` random examples: drawn independently for every arm (the bandit model), or,
    with ``shared``, one minibatch for all arms pulled together (common random numbers, as when a
    round evaluates its candidates on the same data)."""
    correct = correct.cpu().float()

    def pull(arms):
        k = 1 if shared else arms.shape[1]
        idx = torch.randint(correct.shape[1], (reps, k, samples_per_pull), generator=generator,
                            device=generator.device).cpu()
        return correct[arms.cpu().unsqueeze(-1), idx.expand(reps, arms.shape[1], -1)].mean(-1)
    return pull


def recall_study(make_pull: Callable[[int], PullFn], true_means: torch.Tensor, b: int, budgets, *, reps: int,
                 samples_per_pull: int, arms_per_round: int, selectors=SELECTORS,
                 generator: torch.Generator | None = None) -> dict[str, dict[str, list]]:
    """Top-b recall (mean and standard error over ``reps``) and true spend of each selector at each
    nominal budget (APO, Table 2's comparison).

    ``make_pull(reps)`` builds a fresh pull function; ``true_means`` (n,) or (reps, n) are the arms' real values;
    ``generator`` (CPU) breaks the selectors' ties.
    """
    out = {}
    for s in selectors:
        rec, se, spend = [], [], []
        for budget in budgets:
            sel = select_top(s, make_pull(reps), true_means.shape[-1], b, budget, reps=reps,
                             samples_per_pull=samples_per_pull, arms_per_round=arms_per_round, generator=generator)
            r = top_b_recall(sel.top, true_means.expand(reps, -1), b)
            rec.append(float(r.mean()))
            se.append(float(r.std() / math.sqrt(reps)) if reps > 1 else float("nan"))
            spend.append(float(sel.spend.float().mean()))
        out[s] = {"recall": rec, "se": se, "spend": spend}
    return out


def recall_gain(study: dict, selector: str, baseline: str = "uniform") -> dict:
    """Mean top-b recall of ``selector`` minus ``baseline`` over a study's budgets, with its standard error
    (the runs of the two selectors are independent)."""
    a, b = study[selector], study[baseline]
    n = len(a["recall"])
    gain = sum(x - y for x, y in zip(a["recall"], b["recall"])) / n
    se = math.sqrt(sum(x * x + y * y for x, y in zip(a["se"], b["se"]))) / n
    return {"gain": gain, "se": se}
