"""Tests for safe.data.mixture: batch composition, epochs, curriculum, exact resume, validation."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from safe.data.mixture import BalancedMixtureSampler, order_by_family
from safe.data.records import Example

AUDIO = list(range(100, 106))    # 6 audio examples
VL = list(range(10))             # 10 VL examples


def test_every_batch_has_the_exact_composition_audio_first():
    s = BalancedMixtureSampler(AUDIO, VL, batch_size=4, audio_share=0.5, seed=3)
    assert (s.n_audio, s.n_vl) == (2, 2)
    for _ in range(20):
        b = s.next_batch()
        assert len(b) == 4
        assert all(i in AUDIO for i in b[:2]) and all(i in VL for i in b[2:])
    # round(): 5 * 0.5 = 2.5 -> 2 (half to even), 7 * 0.3 = 2.1 -> 2, 8 * 0.65 = 5.2 -> 5
    assert BalancedMixtureSampler(AUDIO, VL, 5, 0.5).n_audio == 2
    assert BalancedMixtureSampler(AUDIO, VL, 7, 0.3).n_audio == 2
    assert BalancedMixtureSampler(AUDIO, VL, 8, 0.65).n_audio == 5


def test_epochs_are_without_replacement():
    s = BalancedMixtureSampler(AUDIO, VL, batch_size=4, seed=0)
    batches = [s.next_batch() for _ in range(15)]   # 30 audio draws = 5 epochs of 6; 30 VL = 3 of 10
    audio = [i for b in batches for i in b[:2]]
    vl = [i for b in batches for i in b[2:]]
    for e in range(5):
        assert sorted(audio[6 * e: 6 * e + 6]) == AUDIO
    for e in range(3):
        assert sorted(vl[10 * e: 10 * e + 10]) == VL
    # reshuffled: the epochs are not all the same order
    assert len({tuple(audio[6 * e: 6 * e + 6]) for e in range(5)}) > 1


def test_deterministic_per_seed():
    a = [BalancedMixtureSampler(AUDIO, VL, 4, seed=1).next_batch() for _ in range(1)]
    s1, s2, s3 = (BalancedMixtureSampler(AUDIO, VL, 4, seed=k) for k in (1, 1, 2))
    x = [s1.next_batch() for _ in range(10)]
    assert x == [s2.next_batch() for _ in range(10)]
    assert x != [s3.next_batch() for _ in range(10)]
    assert a[0] == x[0]


def test_pool_smaller_than_its_share_crosses_epochs():
    s = BalancedMixtureSampler([7, 8], [1, 2, 3], batch_size=6, audio_share=0.5, seed=0)
    b = s.next_batch()
    assert Counter(b[:3])[7] + Counter(b[:3])[8] == 3 and set(b[:3]) == {7, 8}
    assert set(b[3:]) == {1, 2, 3}


def test_exposure_restricts_to_a_prefix_of_the_order():
    order = [105, 104, 103, 102, 101, 100]   # easy -> hard
    s = BalancedMixtureSampler(AUDIO, VL, batch_size=4, audio_order=order, seed=0)
    s.set_exposure(0.3)                       # ceil(0.3 * 6) = ceil(1.8) = 2
    assert s.eligible_audio == [105, 104]
    drawn = {i for _ in range(10) for i in s.next_batch()[:2]}
    assert drawn == {105, 104}
    s.set_exposure(0.0)                       # never fewer than one
    assert s.eligible_audio == [105]
    assert all(s.next_batch()[:2] == [105, 105] for _ in range(3))
    s.set_exposure(0.5)
    assert s.eligible_audio == [105, 104, 103]
    hundred = BalancedMixtureSampler(list(range(100)), VL, 2)
    hundred.set_exposure(0.07)                # 0.07 * 100 is 7.000000000000001 in floating point
    assert hundred.eligible_audio == list(range(7))   # default order: audio_indices as given
    with pytest.raises(ValueError, match=r"fraction.*1\.5"):
        s.set_exposure(1.5)


def test_newly_eligible_items_join_the_current_epoch():
    audio = list(range(8))
    s = BalancedMixtureSampler(audio, VL, batch_size=2, audio_share=0.5, seed=5)
    s.set_exposure(0.5)                       # items 0..3
    first = [s.next_batch()[0] for _ in range(2)]          # 2 of the 4 drawn
    s.set_exposure(1.0)                       # 4..7 join: 2 + 4 = 6 left in this epoch
    rest = [s.next_batch()[0] for _ in range(6)]
    assert sorted(first + rest) == audio      # each exactly once: the epoch was not restarted
    s.set_exposure(0.25)                      # shrinking drops ineligible items from the epoch
    assert {s.next_batch()[0] for _ in range(6)} <= {0, 1}


def test_state_dict_resumes_exactly_across_exposure_changes():
    order = [103, 101, 105, 100, 102, 104]
    kw = dict(audio_indices=AUDIO, vl_indices=VL, batch_size=5, audio_share=0.6, seed=11, audio_order=order)
    ref = BalancedMixtureSampler(**kw)
    ref.set_exposure(0.25)
    for _ in range(3):
        ref.next_batch()
    state = json.loads(json.dumps(ref.state_dict()))   # must survive JSON (checkpoint metadata)
    restored = BalancedMixtureSampler(**kw)
    restored.load_state_dict(state)
    assert restored.exposure == 0.25 and restored.batches_drawn == 3

    def run(s):
        out = [s.next_batch() for _ in range(4)]
        s.set_exposure(0.7)
        out += [s.next_batch() for _ in range(5)]
        s.set_exposure(0.4)
        out += [s.next_batch() for _ in range(3)]
        return out

    assert run(ref) == run(restored)
    # a sampler with other arguments refuses the state
    other = BalancedMixtureSampler(**{**kw, "seed": 12})
    with pytest.raises(ValueError, match="other arguments"):
        other.load_state_dict(state)


def test_fresh_sampler_differs_from_restored_one():
    # guards the test above: without load_state_dict the continuation is different
    kw = dict(audio_indices=AUDIO, vl_indices=VL, batch_size=4, seed=2)
    a, b = BalancedMixtureSampler(**kw), BalancedMixtureSampler(**kw)
    for _ in range(3):
        a.next_batch()
    assert [a.next_batch() for _ in range(5)] != [b.next_batch() for _ in range(5)]


@pytest.mark.parametrize("kwargs,name", [
    ({"audio_indices": []}, "audio_indices"),
    ({"vl_indices": []}, "vl_indices"),
    ({"audio_share": 1.5}, "audio_share"),
    ({"audio_share": -0.1}, "audio_share"),
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 2.0}, "batch_size"),
    ({"audio_order": [100, 101]}, "audio_order"),
    ({"audio_indices": [1.5, 2]}, "audio_indices"),
    ({"seed": -1}, "seed"),
])
def test_argument_errors_name_the_argument(kwargs, name):
    args = {"audio_indices": AUDIO, "vl_indices": VL, "batch_size": 4, **kwargs}
    with pytest.raises(ValueError, match=name):
        BalancedMixtureSampler(**args)


def test_unused_empty_pool_is_allowed():
    s = BalancedMixtureSampler([], VL, batch_size=3, audio_share=0.0)
    assert all(i in VL for i in s.next_batch())
    s = BalancedMixtureSampler(AUDIO, [], batch_size=3, audio_share=1.0)
    assert all(i in AUDIO for i in s.next_batch())


def ex(i, family, needs_audio):
    return Example(id=str(i), task="synth", family=family, question="q", answers=("a",),
                   needs_audio=needs_audio)


def test_order_by_family_is_stable_with_unknown_families_last():
    examples = [ex(0, "pitch", True), ex(1, "colour", False), ex(2, "sound_kind", True),
                ex(3, "mystery", True), ex(4, "pitch", True), ex(5, "sound_kind", True),
                ex(6, "beep_count", True)]
    order = order_by_family(examples, ["sound_kind", "pitch", "beep_count"])
    assert order == [2, 5, 0, 4, 6, 3]
    audio = [i for i, e in enumerate(examples) if e.needs_audio]
    BalancedMixtureSampler(audio, [1], 2, audio_order=order)   # a valid audio_order
    assert order_by_family(examples, []) == [0, 2, 3, 4, 5, 6]
    with pytest.raises(ValueError, match="family_order"):
        order_by_family(examples, "pitch")
