"""ESR / SimFER / Grad-CAM: official layer facts, official weights, Eqs. 3–5 on hand-made logits, CAM hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import shared_path

from emdlib.checkpoint import load_torch_state_dict
from emdlib.models.esr import (
    ESR,
    OFFICIAL_BASE_FILE,
    OFFICIAL_BRANCH_FILE,
    ensemble_vote_from_logits,
    load_official_esr,
    select_branch_from_logits,
    write_official_esr,
)
from emdlib.models.gradcam import GradCAM, grad_cam
from emdlib.models.simfer import SimFER


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
            mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
            mod.num_batches_tracked.fill_(7)


# ---------------------------------------------------------------- architecture (reference-facts §A.1–A.3)


def test_shapes_for_96_input():
    torch.manual_seed(0)
    m = ESR(num_branches=2).eval()
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert m.base(x).shape == (2, 128, 20, 20)
        assert m.branch_maps(x).shape == (2, 2, 512, 6, 6)
        assert m(x).shape == (2, 2, 8)
        assert m.affect(x).shape == (2, 2, 2)
        fer_map, branch, cls = m.select_branch(x)
    assert fer_map.shape == (2, 512, 6, 6) and branch.shape == (2,) and cls.shape == (2,)
    assert m.map_size(96) == 6 and m.map_size(224) == 22 and m.map_size(299) == 31


def test_parameter_counts_equal_official():
    m = ESR(num_branches=9)
    assert n_params(m.base) == 374_784
    assert n_params(m.branches[0]) == 2_219_418
    assert n_params(m.branches[0].fc) == 4_104 and n_params(m.branches[0].fc_dimensional) == 18
    assert n_params(m) == 20_349_546


def test_official_key_layout():
    m = ESR(num_branches=1)
    convs = [f"conv{i}.{p}" for i in range(1, 5) for p in ("weight", "bias")]
    bns = [f"bn{i}.{p}" for i in range(1, 5)
           for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
    assert list(m.base.state_dict()) == convs + bns
    heads = ["fc.weight", "fc.bias", "fc_dimensional.weight", "fc_dimensional.bias"]
    assert list(m.branches[0].state_dict()) == convs + bns + heads
    assert m.branches[0].state_dict()["conv4.weight"].shape == (512, 256, 3, 3)


def test_bad_input_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="esr_input"):
        ESR(1)(torch.rand(1, 1, 96, 96))


# ---------------------------------------------------------------- official weights


def official_folder_copy(dst, skip: str | None = None):
    """``../shared/weights/esr9`` copied to ``dst`` (minus ``skip``); branch files absent there (the shared copy has
    only the base) are written as stand-ins in the official layout. Skips the test when the base file is absent."""
    import shutil

    src = shared_path("weights", "esr9", OFFICIAL_BASE_FILE).parent
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name != skip:
            shutil.copy(f, dst / f.name)
    stand_ins = [b for b in range(9) if OFFICIAL_BRANCH_FILE.format(b + 1) != skip
                 and not (dst / OFFICIAL_BRANCH_FILE.format(b + 1)).is_file()]
    if stand_ins:
        base = (dst / OFFICIAL_BASE_FILE).read_bytes()
        torch.manual_seed(3)
        write_official_esr(ESR(num_branches=9), dst, branches=stand_ins)
        (dst / OFFICIAL_BASE_FILE).write_bytes(base)  # the official base, not the stand-in's
    return src


def test_official_base_checkpoint_loads(tmp_path):
    src = official_folder_copy(tmp_path)
    m = ESR(num_branches=9)
    report = load_official_esr(m, tmp_path)
    assert [p.name for p in report.loaded] == [OFFICIAL_BASE_FILE] + [f"Net-Branch_{b}.pt" for b in range(1, 10)]
    official = load_torch_state_dict(src / OFFICIAL_BASE_FILE)
    assert set(official) == set(m.base.state_dict())  # no missing, no unexpected keys
    for k, v in m.base.state_dict().items():
        assert torch.equal(v, official[k]), k
    m.eval()
    with torch.no_grad():
        assert torch.isfinite(m.base(torch.rand(1, 3, 96, 96))).all()


def test_official_folder_missing_a_branch_fails_by_name(tmp_path):
    """Issue 13: an ESR-9 folder without ``Net-Branch_4.pt`` is an error naming it (no random branch votes)."""
    folder = tmp_path / "esr9"
    official_folder_copy(folder, skip="Net-Branch_4.pt")
    m = ESR(num_branches=9)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(FileNotFoundError) as e:
        load_official_esr(m, folder)
    assert str(e.value).startswith(f"{folder}: official ESR-9 file(s) missing: Net-Branch_4.pt (")
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # nothing half-loaded
    (folder / OFFICIAL_BASE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=rf"missing: {OFFICIAL_BASE_FILE}, Net-Branch_4\.pt \("):
        load_official_esr(ESR(num_branches=9), folder)


def test_missing_branch_file_fails_by_name_without_shared_data(tmp_path):
    write_official_esr(ESR(num_branches=3), tmp_path)
    (tmp_path / "Net-Branch_2.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"official ESR-3 file\(s\) missing: Net-Branch_2\.pt \("):
        load_official_esr(ESR(num_branches=3), tmp_path)


def test_official_layout_round_trip(tmp_path):
    torch.manual_seed(1)
    src = ESR(num_branches=2)
    randomise_bn(src)
    written = write_official_esr(src, tmp_path)
    assert [p.name for p in written] == [OFFICIAL_BASE_FILE, "Net-Branch_1.pt", "Net-Branch_2.pt"]
    raw = torch.load(tmp_path / "Net-Branch_2.pt", map_location="cpu", weights_only=True)
    assert list(raw) == list(src.branches[1].state_dict())  # official key order
    torch.manual_seed(2)
    dst = ESR(num_branches=2)
    report = load_official_esr(dst, tmp_path)
    assert len(report.loaded) == 3
    for (k, a), (k2, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    src.eval(), dst.eval()
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_official_loader_errors_name_the_file(tmp_path):
    m = ESR(num_branches=1)
    write_official_esr(m, tmp_path)
    bad = tmp_path / "Net-Branch_1.pt"
    state = torch.load(bad, weights_only=True)
    del state["fc_dimensional.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"Net-Branch_1\.pt.*fc_dimensional\.weight.*extra\.weight"):
        load_official_esr(ESR(num_branches=1), tmp_path)
    (tmp_path / OFFICIAL_BASE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=OFFICIAL_BASE_FILE):
        load_official_esr(ESR(num_branches=1), tmp_path)


# ---------------------------------------------------------------- Eqs. 3–5 on hand-made logits


def test_select_branch_hand_cases():
    cases = [
        # (logits (B, C), expected branch with voters_only, expected branch for literal Eq. 5, expected class)
        # votes 1, 1, 0 -> mode 1; branch 1 is the more confident voter for class 1
        ([[0, 2, 0, 0], [0, 3, 0, 0], [5, 0, 0, 0]], 1, 1, 1),
        # votes 1, 1, 2 -> mode 1; the non-voter (branch 2) has the highest p(class 1) = 0.475 > 0.289 > 0.268
        ([[0, 0.1, 0, 0], [0, 0.2, 0, 0], [-10, 3, 3.1, -10]], 1, 2, 1),
        # votes 3, 1, 0 (all-equal logits vote for class 0): three-way mode tie -> lowest class 0 -> branch 2
        ([[0, 0, 0, 9], [0, 1, 0, 0], [-1, -1, -1, -1]], 2, 2, 0),
        # probability tie between identical voters -> lowest branch index
        ([[0, 0, 2, 0], [0, 0, 2, 0], [3, 0, 0, 0]], 0, 0, 2),
    ]
    logits = torch.tensor([c[0] for c in cases], dtype=torch.float32)
    branch, cls = select_branch_from_logits(logits)
    assert branch.tolist() == [c[1] for c in cases]
    assert cls.tolist() == [c[3] for c in cases]
    branch_lit, cls_lit = select_branch_from_logits(logits, voters_only=False)
    assert branch_lit.tolist() == [c[2] for c in cases] and torch.equal(cls_lit, cls)
    assert ensemble_vote_from_logits(logits).tolist() == [1, 1, 0, 2]


def test_mode_tie_between_two_classes_goes_to_lowest_index():
    logits = torch.tensor([[[0, 0, 0, 5], [0, 0, 0, 4], [0, 7, 0, 0], [0, 6, 0, 0]]], dtype=torch.float32)
    branch, cls = select_branch_from_logits(logits)
    assert cls.item() == 1 and branch.item() == 2


def test_select_branch_matches_numpy_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 9, 8)).round(1)  # rounding makes vote ties frequent
    branch, cls = select_branch_from_logits(torch.from_numpy(logits).float())
    for i in range(len(logits)):
        preds = logits[i].argmax(-1)
        c = np.bincount(preds, minlength=8).argmax()  # official: numpy argmax of the vote histogram
        p = np.exp(logits[i] - logits[i].max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        voters = np.flatnonzero(preds == c)
        b = voters[np.argmax(p[voters, c])]
        assert (cls[i].item(), branch[i].item()) == (c, b), i


def test_select_branch_returns_the_selected_map():
    torch.manual_seed(0)
    m = ESR(num_branches=3).eval()
    x = torch.rand(4, 3, 96, 96)
    with torch.no_grad():
        fer_map, branch, cls = m.select_branch(x)
        maps, logits = m.branch_outputs(x)
    b_ref, c_ref = select_branch_from_logits(logits)
    assert torch.equal(branch, b_ref) and torch.equal(cls, c_ref)
    for i in range(4):
        assert torch.equal(fer_map[i], maps[i, branch[i]])
    assert torch.equal(m.ensemble_vote(x), c_ref)


# ---------------------------------------------------------------- learning, SimFER


def test_esr_overfits_a_tiny_batch():
    from emdlib.train_fer import fer_loss

    torch.manual_seed(0)
    m = ESR(num_branches=2)
    x = torch.rand(4, 3, 56, 56)  # ESR runs on any side >= 54; 56 keeps the test fast
    y = torch.tensor([0, 3, 5, 7])
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        loss = fer_loss(m(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 3.5  # about 2 * ln 8 at initialisation
    assert loss.item() < 0.2 * first
    with torch.no_grad():
        assert (m(x).argmax(-1) == y[:, None]).float().mean() > 0.9


def test_simfer_has_the_fer_stream_interface():
    torch.manual_seed(0)
    m = SimFER().eval()
    x = torch.rand(3, 3, 96, 96)
    with torch.no_grad():
        logits = m(x)
        assert logits.shape == (3, 1, 8)
        assert m.branch_maps(x).shape == (3, 1, 512, 10, 10)
        fer_map, branch, cls = m.select_branch(x)
    assert fer_map.shape == (3, 512, 10, 10) and m.map_size(96) == 10
    assert branch.tolist() == [0, 0, 0] and torch.equal(cls, logits[:, 0].argmax(-1))
    assert m.feature_channels == 512 and m.num_branches == 1
    assert n_params(m) < n_params(ESR(1)) / 5


# ---------------------------------------------------------------- Grad-CAM (reference-facts §A.8)


def test_grad_cam_formula_by_hand():
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [0.0, 0.0]]])  # (K=2, 2, 2)
    g = torch.stack([torch.full((2, 2), 1.0), torch.full((2, 2), -0.5)])  # weights 1, -0.5
    # saliency = a0 - 0.5 a1 = [[-1, 2], [3, 4]] -> clamp [[0, 2], [3, 4]] -> (x - 0) / 4
    expected = torch.tensor([[0.0, 0.5], [0.75, 1.0]])
    assert torch.allclose(grad_cam(a, g, eps=0.0), expected)
    assert torch.equal(grad_cam(a, torch.zeros_like(g)), torch.zeros(2, 2))  # eps: no division by zero


@pytest.mark.parametrize("model_cls", [lambda: ESR(num_branches=2), SimFER])
def test_cam_hooks_released_and_values(model_cls):
    torch.manual_seed(0)
    m = model_cls()
    randomise_bn(m)
    m.train()
    layers = m.cam_layers()
    x = torch.rand(3, 3, 96, 96)
    with GradCAM(m) as cam:
        assert all(len(layer._forward_hooks) == 1 for layer in layers)
        assert not m.training
        res = cam(x, size=(96, 96))
        raw = cam(x)  # at the map's own resolution: exactly min-max normalised
        single = cam(x[1:2], size=(96, 96))
        per_branch = cam.branch_cams(x, size=48)
    assert all(len(layer._forward_hooks) == 0 for layer in layers)
    assert m.training  # mode restored
    assert res.cam.shape == (3, 96, 96) and per_branch.shape == (3, m.num_branches, 48, 48)
    assert res.cam.min() >= 0 and res.cam.max() <= 1
    side = m.map_size(96)
    assert raw.cam.shape == (3, side, side)
    assert torch.allclose(raw.cam.amax((-2, -1)), torch.ones(3), atol=1e-4)  # eps in the denominator
    assert torch.equal(raw.cam.amin((-2, -1)), torch.zeros(3))
    assert torch.allclose(res.cam[1], single.cam[0], atol=1e-5)  # batched == one image at a time
    with torch.no_grad():
        m.eval()
        b_ref, c_ref = select_branch_from_logits(m(x))
    assert torch.equal(res.branch, b_ref) and torch.equal(res.cls, c_ref)
    with pytest.raises(RuntimeError, match="outside its context"):
        cam(x)
