"""The FER memo (emdlib.models.fer_memo): same bits as the un-memoised stream, counts, budget, weights, state dict."""

from __future__ import annotations

import pytest
import torch

from emdlib.models.esr import ESR
from emdlib.models.fer_memo import FERMemo, memoise, unmemoise
from emdlib.models.simfer import SimFER


def _stream(kind: str = "esr") -> ESR | SimFER:
    torch.manual_seed(0)
    m = ESR(num_branches=3) if kind == "esr" else SimFER()
    with torch.no_grad():  # non-trivial BN statistics, so that eval mode matters
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _same(a, b) -> bool:
    return all(torch.equal(p, q) and p.dtype == q.dtype for p, q in zip(a, b))


@pytest.mark.parametrize("kind", ["esr", "simfer"])
def test_mixed_hits_and_misses_are_bitwise_the_unmemoised_stream(kind):
    stream = _stream(kind)
    x = torch.rand(12, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    memo = memoise(stream)
    batches = _batches(x)
    with torch.no_grad():
        for b in batches:
            got = stream.select_branch(b)
            want = stream.compute_select_branch(b)
            assert _same(got, want)
            assert got[0].shape == (len(b), stream.feature_channels, *want[0].shape[-2:])
    assert (memo.hits, memo.misses) == (0 + 3 + 3 + 0 + 0 + 1 + 1 + 0, 6 + 3 + 1 + 1 + 1 + 0 + 1 + 2)
    assert len(memo) == 6 + 3 + 1 + 1 + 1 + 1 + 2 and memo.not_stored == 0
    assert memo.nbytes == sum(e.nbytes for e in memo._entries.values()) > 0


def test_a_batch_dependent_stream_is_kept_per_batch_size():
    """What other devices get (cuDNN picks algorithms by batch size): results per batch size, misses padded to it."""
    stream = _stream()
    x = torch.rand(12, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    memo = memoise(stream, FERMemo(batch_invariant=False))
    calls = []
    compute = stream.compute_select_branch
    stream.compute_select_branch = lambda b, v=True: calls.append(len(b)) or compute(b, v)
    with torch.no_grad():
        for b in _batches(x):
            assert _same(stream.select_branch(b), compute(b))
    assert calls == [6, 6, 4, 1, 1, 2, 2]  # every pass at the caller's batch size; the second x[[3]] is a hit
    assert (memo.hits, memo.misses) == (0 + 3 + 0 + 0 + 0 + 1 + 0 + 0, 6 + 3 + 4 + 1 + 1 + 0 + 2 + 2)


def _batches(x: torch.Tensor) -> list[torch.Tensor]:
    return [
        x[:6],  # six misses
        x[[4, 8, 1, 9, 10, 0]],  # three hits, three misses, shuffled
        x[[2, 11, 3, 5]],  # a lone miss (11) among hits: computed beside another image, not on its own
        x[[7]],  # a batch of one: its own entry
        x[[3]],  # a batch of one, seen before only in larger batches
        x[[3]],  # ... now a hit
        x[[0, 7]],  # 7 was seen only alone: a lone miss again
        torch.flip(x[:2], dims=[3]),  # flipped images are other images
    ]


def test_memo_is_not_in_the_state_dict_and_detaches():
    stream = _stream()
    keys = list(stream.state_dict())
    memo = memoise(stream)
    assert list(stream.state_dict()) == keys and stream.spec() == {"name": "esr", "kwargs": {"num_branches": 3,
                                                                                          "num_classes": 8}}
    assert stream.memo is memo and not any(m is memo for m in stream.modules())
    assert unmemoise(stream) is memo and stream.memo is None and unmemoise(stream) is None


def test_budget_and_bypass():
    stream = _stream()
    x = torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = stream.compute_select_branch(x)
        one = stream.compute_select_branch(x[:2])[0][0]
        memo = memoise(stream, max_bytes=one.nelement() * one.element_size() + 16)  # room for exactly one image
        assert _same(stream.select_branch(x), want) and _same(stream.select_branch(x), want)
    assert (len(memo), memo.not_stored, memo.hits, memo.misses) == (1, 6, 1, 7)
    stream.train()  # training mode (batch statistics): the memo is not used
    with torch.no_grad():
        stream.select_branch(x)
    stream.eval()
    for p in stream.parameters():  # parameters that take gradients: not used either
        p.requires_grad_(True)
    stream.select_branch(x[:2])
    assert (memo.hits, memo.misses) == (1, 7)
    with pytest.raises(ValueError, match="max_bytes must be >= 0"):
        FERMemo(-1)
    with pytest.raises(TypeError, match="memoise needs a FERStream"):
        memoise(torch.nn.Linear(2, 2))  # type: ignore[arg-type]


def test_new_weights_empty_the_memo_and_a_shared_memo_survives_a_reload():
    stream = _stream()
    x = torch.rand(3, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    memo = memoise(stream)
    with torch.no_grad():
        stream.select_branch(x)
        reloaded = _stream()  # the same weights in new tensors (a checkpoint loaded for the next run)
        memoise(reloaded, memo)
        assert _same(reloaded.select_branch(x), stream.compute_select_branch(x)) and memo.hits == 3
        reloaded.base.conv1.weight.mul_(2)  # in place: the same storage, another version
        got = reloaded.select_branch(x)
        assert _same(got, reloaded.compute_select_branch(x)) and not _same(got, stream.compute_select_branch(x))
    assert (memo.hits, memo.misses, len(memo)) == (3, 6, 3)


def test_the_study_attaches_one_memo_per_fer_kind_outside_the_model_state(study, monkeypatch):
    from emdlib.registry import build_model, model_from_checkpoint, save_detector, save_fer_stream
    from emdlib.study import experiments

    monkeypatch.setattr(experiments, "FER_MEMOS", {})
    save_fer_stream(study.paths.checkpoints / "esr.safetensors", build_model("esr", num_branches=2))
    model, spec = experiments.build_system(study, experiments.SYSTEMS["EMD"])
    again, _ = experiments.build_system(study, experiments.SYSTEMS["EMD"])
    assert isinstance(model.fer.memo, FERMemo) and again.fer.memo is model.fer.memo is experiments.FER_MEMOS["ESR"]
    plain = build_model("emd", fer=build_model("esr", num_branches=2), encoder=study.preset.emd.encoder)
    assert list(model.state_dict()) == list(plain.state_dict()) and spec == plain.spec()
    save_detector(study.paths.checkpoints / "emd.safetensors", model, study.preset.emd.image_size, spec=spec)
    rebuilt, _ = model_from_checkpoint(study.paths.checkpoints / "emd.safetensors")
    assert rebuilt.fer.memo is None  # emd detect and the figures run without it


def test_channels_last_inputs_are_kept_apart():
    stream = _stream()
    x = torch.rand(4, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    memo = memoise(stream)
    with torch.no_grad():
        stream.select_branch(x)
        got = stream.select_branch(x.contiguous(memory_format=torch.channels_last))  # the GPU training layout
        assert _same(got, stream.compute_select_branch(x.contiguous(memory_format=torch.channels_last)))
        stream.select_branch(x.clone())  # contiguous again: read back
    assert (memo.hits, memo.misses) == (4, 8)
