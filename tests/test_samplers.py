"""Multi-task samplers: task shares, coverage, determinism and mid-epoch resume."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from torch.utils.data import DataLoader, Sampler

from medmtl.data.samplers import SAMPLERS

SIZES = (1000, 100, 10)
TASK_IDS = np.repeat(np.arange(len(SIZES)), SIZES)  # items 0..999 task 0, 1000..1099 task 1, ...


def make(name: str, task_ids=TASK_IDS, **kwargs):
    return SAMPLERS.get(name)(task_ids, **kwargs)


def test_registered_samplers_are_pinned():
    assert sorted(SAMPLERS) == ["balanced", "cyclic", "proportional"]


def test_unknown_sampler_lists_the_registered_names():
    with pytest.raises(KeyError, match=r"'balance' is not a registered sampler; choose one of "
                                       r"\['balanced', 'cyclic', 'proportional'\] \(did you mean 'balanced'\?\)"):
        SAMPLERS.get("balance")


@pytest.mark.parametrize("name", sorted(SAMPLERS))
class TestEverySampler:
    def test_is_an_int_sampler_of_the_requested_length(self, name):
        sampler = make(name, num_samples=777)
        assert isinstance(sampler, Sampler) and len(sampler) == 777
        order = list(sampler)
        assert len(order) == 777 and all(type(i) is int for i in order)
        assert min(order) >= 0 and max(order) < len(TASK_IDS)

    def test_default_length_is_the_number_of_items(self, name):
        assert len(make(name)) == len(TASK_IDS) == len(list(make(name)))

    def test_same_seed_and_epoch_give_the_same_order(self, name):
        a, b = make(name, seed=3), make(name, seed=3)
        a.set_epoch(5)
        b.set_epoch(5)
        assert list(a) == list(b)

    def test_other_epoch_or_seed_gives_another_order(self, name):
        base = list(make(name, seed=3))
        other_epoch = make(name, seed=3)
        other_epoch.set_epoch(1)
        assert list(other_epoch) != base
        assert list(make(name, seed=4)) != base

    def test_order_ignores_numpy_global_state(self, name):
        np.random.seed(0)
        a = list(make(name))
        np.random.seed(1)
        assert list(make(name)) == a

    @pytest.mark.parametrize("k", [0, 1, 537, 1109])
    def test_resume_mid_epoch_yields_exactly_the_rest(self, name, k):
        reference = make(name, seed=7)
        reference.set_epoch(2)
        full = list(reference)

        first = make(name, seed=7)
        first.set_epoch(2)
        consumed = list(itertools.islice(iter(first), k))
        state = first.state_dict()
        assert state["position"] == k and state["epoch"] == 2 and state["seed"] == 7

        resumed = make(name, seed=0)  # the seed comes back from the state
        resumed.load_state_dict(state)
        resumed.set_epoch(2)  # what a loop does at the top of the epoch: must not rewind
        assert consumed + list(resumed) == full

    def test_finished_epoch_replays_and_next_epoch_starts_at_zero(self, name):
        sampler = make(name, num_samples=50)
        first = list(sampler)
        assert sampler.position == 50
        assert list(sampler) == first  # iterating again without set_epoch must not yield nothing
        sampler.set_epoch(1)
        assert sampler.position == 0 and len(list(sampler)) == 50

    def test_works_in_a_dataloader(self, name):
        sampler = make(name, num_samples=64)
        batches = list(DataLoader(np.arange(len(TASK_IDS)), batch_size=16, sampler=sampler))
        assert np.concatenate([b.numpy() for b in batches]).tolist() == list(make(name, num_samples=64))

    def test_noncontiguous_task_labels(self, name):
        task_ids = np.array([7, -2, 7, 40, -2, 7])
        order = list(make(name, task_ids=task_ids, num_samples=60))
        assert set(order) == set(range(6))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("task_ids, num_samples, seed, match", [
    ([], None, 0, r"task_ids must be a non-empty 1-D array with one task per item; got shape \(0,\)"),
    ([[0, 1]], None, 0, r"task_ids must be a non-empty 1-D array .*; got shape \(1, 2\)"),
    ([0.5, 1.0], None, 0, r"task_ids must hold integers; got dtype float64"),
    ([0, 1], -1, 0, r"num_samples must be an integer >= 1; got num_samples=-1"),
    ([0, 1], 0, 0, r"num_samples must be an integer >= 1; got num_samples=0"),
    ([0, 1], 2.5, 0, r"num_samples must be an integer >= 1; got num_samples=2.5"),
    ([0, 1], None, -3, r"seed must be an integer >= 0; got seed=-3"),
])
def test_invalid_arguments_are_refused(name, task_ids, num_samples, seed, match):
    with pytest.raises(ValueError, match=match):
        make(name, task_ids=task_ids, num_samples=num_samples, seed=seed)


def test_negative_epoch_is_refused():
    with pytest.raises(ValueError, match=r"epoch must be an integer >= 0; got epoch=-1"):
        make("balanced").set_epoch(-1)


@pytest.mark.parametrize("change, match", [
    ({"sampler": "CyclicSampler"},
     r"state_dict\['sampler'\]='CyclicSampler' does not match this sampler's 'BalancedSampler'"),
    ({"num_samples": 5}, r"state_dict\['num_samples'\]=5 does not match this sampler's 1110"),
    ({"position": 2000}, r"state_dict\['position'\]=2000 exceeds num_samples=1110"),
])
def test_incompatible_state_is_refused(change, match):
    state = {**make("balanced").state_dict(), **change}
    with pytest.raises(ValueError, match=match):
        make("balanced").load_state_dict(state)


def test_state_from_other_task_ids_is_refused():
    state = make("balanced").state_dict()
    match = r"state_dict\['task_ids_sha1'\]=.* resume with the sampler, num_samples and task_ids"
    with pytest.raises(ValueError, match=match):
        make("balanced", task_ids=TASK_IDS[::-1].copy()).load_state_dict(state)


def test_balanced_gives_every_task_a_third_of_the_draws():
    draws = list(make("balanced", num_samples=30000, seed=11))
    shares = np.bincount(TASK_IDS[draws], minlength=3) / len(draws)
    assert np.allclose(shares, 1 / 3, atol=0.05 / 3)  # within 5 % of a third


def test_balanced_covers_a_task_before_repeating_an_item():
    draws = np.asarray(list(make("balanced", num_samples=30000, seed=11)))
    for task, size in enumerate(SIZES):
        items = draws[TASK_IDS[draws] == task]
        for start in range(0, len(items) - size + 1, size):
            assert len(set(items[start:start + size].tolist())) == size  # each refill is a permutation
        assert set(items.tolist()) <= set(np.flatnonzero(TASK_IDS == task).tolist())


def test_balanced_interleaves_tasks_randomly_not_in_blocks():
    draws = np.asarray(list(make("balanced", num_samples=3000)))
    tasks = TASK_IDS[draws]
    switches = np.count_nonzero(np.diff(tasks))
    assert 0.55 < switches / len(tasks) < 0.78  # uniform task draws switch 2/3 of the time


def test_proportional_yields_every_item_once_per_epoch():
    sampler = make("proportional")
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(order) == list(range(len(TASK_IDS)))
    assert order != list(range(len(TASK_IDS)))


def test_proportional_concatenates_full_permutations_when_longer():
    n = len(TASK_IDS)
    order = list(make("proportional", num_samples=2 * n + 5))
    assert sorted(order[:n]) == sorted(order[n:2 * n]) == list(range(n))
    assert len(set(order[2 * n:])) == 5


def test_proportional_follows_task_sizes():
    order = list(make("proportional", num_samples=555))
    shares = np.bincount(TASK_IDS[order], minlength=3) / 555
    assert np.allclose(shares, np.array(SIZES) / sum(SIZES), atol=0.05)


def test_cyclic_strictly_alternates_tasks():
    order = list(make("cyclic", num_samples=3001, seed=5))
    assert TASK_IDS[order].tolist() == [0, 1, 2] * 1000 + [0]


def test_cyclic_covers_each_task_before_repeating():
    order = np.asarray(list(make("cyclic", num_samples=3000, seed=5)))
    smallest = order[2::3]  # task 2, 10 items
    for start in range(0, len(smallest), 10):
        assert sorted(smallest[start:start + 10].tolist()) == list(range(1100, 1110))
    assert len(set(order[0::3].tolist())) == 1000  # task 0 seen once each in its 1000 slots


def test_cyclic_with_sorted_noncontiguous_task_labels():
    task_ids = np.array([9, 9, 2, 5, 2])
    order = list(make("cyclic", task_ids=task_ids, num_samples=9))
    assert task_ids[order].tolist() == [2, 5, 9] * 3
