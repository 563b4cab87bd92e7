"""gdlab.prompts.bandits: budget accounting, easy problems solved, validation."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from gdlab.prompts import bandits


def _means(reps=50, n=8, seed=0):
    return 0.3 + 0.5 * torch.rand(reps, n, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("selector", bandits.SELECTORS)
def test_spend_is_accounted(selector):
    means, m, budget = _means(), 8, 1024
    sel = bandits.select_top(selector, bandits.bernoulli_arms(means, m, torch.Generator().manual_seed(1)), 8, 2,
                             budget, reps=50, samples_per_pull=m, arms_per_round=3)
    assert sel.top.shape == (50, 2) and (sel.spend == sel.pulls.sum(1) * m).all()
    assert (sel.spend <= budget).all()
    if selector == "successive-rejects":   # the schedule is fitted so that its true spend uses the budget
        fit = bandits.successive_rejects_fit(8, budget // m, 2)
        assert (sel.spend == bandits.successive_rejects_spend(8, fit, 2) * m).all()
        assert bandits.successive_rejects_spend(8, fit + 1, 2) > budget // m
        assert (sel.spend > 0.9 * budget).all()


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 20), st.integers(25, 400), st.integers(1, 5))
def test_successive_rejects_spend_formula(n, total, b):
    b = min(b, n - 1)
    sched = bandits.successive_rejects_schedule(n, total, b)
    assert len(sched) == n - b and sched == sorted(sched)
    spent = bandits.successive_rejects_spend(n, total, b)
    assert spent == sum((n + 1 - k) * (nk - prev) for k, (nk, prev) in enumerate(zip(sched, [0] + sched[:-1]), 1))


@pytest.mark.parametrize("selector", ["ucb", "ucb-e"])
def test_every_arm_is_pulled_once_before_the_bonus_applies(selector):
    """The first ceil(n/k) rounds pull every arm exactly once, in an order that is random (it varies with
    the generator and across repetitions) but reproducible; no arm is pulled twice before all are pulled."""
    n, k, reps, m = 10, 3, 200, 4
    log = []

    def pull(arms):
        log.append(arms.clone())
        return torch.full(arms.shape, 0.5)   # equal rewards: the order comes from the tie-break alone

    bandits.select_top(selector, pull, n, 2, m * k * 6, reps=reps, samples_per_pull=m, arms_per_round=k,
                       generator=torch.Generator().manual_seed(3))
    first = torch.cat(log[:n // k], dim=1)                       # 3 full rounds: 9 distinct arms
    assert all(len(set(row.tolist())) == first.shape[1] for row in first)
    fourth = log[n // k]
    unpulled = [set(range(n)) - set(row.tolist()) for row in first]
    assert all(u <= set(row.tolist()) for u, row in zip(unpulled, fourth))   # the last unpulled arm comes next
    assert len({tuple(row.tolist()) for row in log[0]}) > 50    # random first picks across repetitions
    assert (log[0][:, 0] == 0).float().mean() < 0.25             # not the index order (was: always arms 0..k-1)
    log2 = []
    bandits.select_top(selector, lambda a: (log2.append(a.clone()), torch.full(a.shape, 0.5))[1], n, 2, m * k * 6,
                       reps=reps, samples_per_pull=m, arms_per_round=k, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(log, log2))    # reproducible given the generator


def test_ties_in_the_final_choice_are_broken_at_random():
    """Arms with equal estimated means: the kept top-b is a random subset, not the lowest indices."""
    sel = bandits.select_top("uniform", lambda a: torch.full(a.shape, 0.5), 6, 2, 6 * 8, reps=300,
                             samples_per_pull=8, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(sel.top.flatten(), minlength=6).float()
    assert counts.min() > 0.5 * counts.mean()


@pytest.mark.parametrize("selector", bandits.SELECTORS)
def test_well_separated_arms_are_found(selector):
    means = torch.tensor([[0.1, 0.9, 0.2, 0.95, 0.15, 0.05]]).expand(20, -1)
    sel = bandits.select_top(selector, bandits.bernoulli_arms(means, 16, torch.Generator().manual_seed(0)), 6, 2,
                             2048, reps=20, samples_per_pull=16, arms_per_round=2)
    assert bandits.top_b_recall(sel.top, means, 2).mean() == 1.0


def test_table_arms_and_recall_study():
    correct = (torch.rand(6, 200, generator=torch.Generator().manual_seed(0)) < torch.linspace(0.2, 0.9, 6)[:, None]).float()
    g = torch.Generator().manual_seed(0)
    out = bandits.recall_study(lambda r: bandits.table_arms(correct, r, 8, g), correct.mean(1), 2, [256, 1024],
                               reps=30, samples_per_pull=8, arms_per_round=2)
    assert set(out) == set(bandits.SELECTORS)
    assert all(0 <= x <= 1 for r in out.values() for x in r["recall"])
    assert out["uniform"]["recall"][1] >= 0.8


def test_validation_messages():
    pull = bandits.bernoulli_arms(_means(1, 4), 8, torch.Generator())
    with pytest.raises(ValueError, match="selector"):
        bandits.select_top("greedy", pull, 4, 1, 256, samples_per_pull=8)
    with pytest.raises(ValueError, match="'b'"):
        bandits.select_top("ucb", pull, 4, 5, 256, samples_per_pull=8)
    with pytest.raises(ValueError, match="budget"):
        bandits.select_top("uniform", pull, 4, 1, 16, samples_per_pull=8)
