"""LAE, the Locality-Aware AutoEncoder (Du, Pentyala, Li & Hu, "Towards Generalizable Deepfake Detection with
Locality-aware AutoEncoder", CIKM 2020, arXiv:1909.05999; EMD Table III): the network, its three losses and the
active-learning choice of the training samples whose manipulation masks regularise it.

What could be confirmed here: only the LAE abstract (arXiv, CIKM and several indexes; no official code is public and
the full text could not be read offline). It states: an autoencoder; "a pixel-wise mask to regularize local
interpretation of LAE to enforce the model to learn intrinsic representation from the forgery region"; "an active
learning framework to select the challenging candidates for labeling, which requires human masks for less than 3%
of the training data". EMD (§IV-C) groups LAE with FT-res as "attempting to learn intrinsic representation". Every
other choice below is ours, labelled ``inferred`` in the recipe (:data:`emdlib.recipes.RECIPES` ``["lae"]``) and in
the deviation ``lae-unread`` (:mod:`emdlib.deviations`):

* Autoencoder: FT-res's, as inferred there (:mod:`emdlib.baselines.forensic_transfer`, ForensicTransfer by
  Cozzolino et al., arXiv:1812.02510, which LAE extends; deviation ``ft-res-architecture``): its
  :class:`~emdlib.baselines.forensic_transfer.Encoder` (five 3×3 Conv → BN → ReLU blocks, channels 8, 16, 32, 64,
  128, the first at stride 1 and the other four at stride 2) gives the latent ``h``, ``(N, 128, S/16, S/16)``
  (non-negative, after ReLU), whose first 64 channels are the *real* half ``h_0`` and the last 64 the *fake* half
  ``h_1``; its :class:`~emdlib.baselines.forensic_transfer.Decoder` (four nearest ×2 upsampling → 3×3 Conv → BN →
  ReLU blocks, channels 64, 32, 16, 8, then a 3×3 Conv) decodes to RGB through ``tanh`` (the input's range), as
  plain ForensicTransfer does on RGB. The one difference from FT-res is the input: the RGB face, not its
  high-pass residual (below). 197,379 parameters at any input size (``ForensicTransfer(residual=False)``'s).
* Class activations ``a_c = mean |h_c|`` (:func:`~emdlib.baselines.forensic_transfer.activations`); the decision is
  the larger one: ``logits = (a_0, a_1)`` (index 1 = fake,
  :func:`~emdlib.baselines.forensic_transfer.activations_to_logits`), so ``P(fake) = σ(a_1 − a_0)`` orders the
  images as the activations do.
* Losses (:func:`lae_loss`): ``L = L_rec + λ_act·L_act + λ_loc·L_loc``. ``L_rec``: mean absolute error between the
  input and its reconstruction decoded from the latent with the *other* class's half set to zero (ForensicTransfer,
  :func:`~emdlib.baselines.forensic_transfer.select_half`); ``L_act = mean_i |a_{i,1} − y_i| + |a_{i,0} − (1 −
  y_i)|`` (ForensicTransfer's activation loss, :func:`~emdlib.baselines.forensic_transfer.activation_loss`);
  ``L_loc``: the locality regulariser on the samples the active learning has chosen (fakes only; a real face has no
  forgery region): the mean, over those samples and their pixels, of the normalised Grad-CAM map of the fake
  activation outside the manipulation mask, ``mean_p Â_p (1 − m_p)`` (:func:`locality_loss`), i.e. attention spent
  outside the forgery region is penalised, as "right for the right reasons" (Ross et al., IJCAI 2017) and the same
  authors' rationale regularisation (Du et al., ICDM 2019) do. λ_act = λ_loc = 1.
* Interpretation (:func:`gradcam_map`): Grad-CAM (Selvaraju et al., ICCV 2017) of the fake activation ``a_1`` on the
  fake half of the latent: ``α_k = mean_ij ∂a_1/∂h_1^k_ij``, ``A = ReLU(Σ_k α_k h_1^k)``, bilinearly upsampled to the
  input size and divided by its maximum (``Â`` in [0, 1]). Because ``a_1`` is a mean of absolute values the
  gradient has the closed form ``sign(h)/(K·h·w)``, used here so that the map is also defined when autograd is off
  (validation); a test checks it against autograd.
* Active learning (:meth:`LAE.select_samples`, called by :func:`emdlib.train.fit` at the start of the epochs
  :func:`selection_epochs` names): uncertainty sampling — among the fake training images without a mask yet, those
  whose prediction has the highest binary entropy ``H(P(fake))`` (ties: the smaller sample key) — in
  ``selection_rounds`` rounds spread evenly over training, until ``mask_fraction`` of all training images (real and
  fake) carry a mask. The fraction (recipe ``active_learning``, 2 %: "less than 3 %" in the abstract) is recorded
  in the run's recipe; the chosen samples are kept in the model's state (``labelled_keys``, ``num_labelled``), so a
  resumed run continues with the same masks, and each epoch's ``train_mask_fraction`` says what share of the
  images stepped on carried one.

Input: the shared ``(x − 0.5)/0.5`` RGB in [−1, 1], resized to ``input_size`` (default 256, FT-res's
:data:`~emdlib.baselines.forensic_transfer.INPUT_SIZE`; :meth:`LAE.normalise`, the one place), is both the network's
input and the reconstruction target (``tanh`` output range).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.asyncio import tqdm

from emdlib.baselines import inputs
from emdlib.baselines.forensic_transfer import (DOWNSAMPLING, HALVES, INPUT_SIZE, Decoder, Encoder, activation_loss,
                                                activations, activations_to_logits, select_half)
from emdlib.models.detector import DetectorNet, DetectorOutput

log = logging.getLogger(__name__)

ACTIVATION_WEIGHT = 1.0  # λ_act
LOCALITY_WEIGHT = 1.0  # λ_loc
MASK_FRACTION = 0.02  # share of the training images that get a mask ("less than 3%", LAE abstract)
SELECTION_ROUNDS = 3
#: Capacity of the state that records the chosen samples (a fixed shape, so checkpoints load strictly).
MAX_MASKS = 20_000


def gradcam_map(fake_half: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017) of the fake activation ``a_1 = mean |h_1|`` on the fake half ``h_1``
    ``(N, K, h, w)`` of the latent: ``α_k = mean_ij ∂a_1/∂h_1^k_ij = mean_ij sign(h_1^k_ij) / (K·h·w)``, ``A =
    ReLU(Σ_k α_k h_1^k)`` → bilinear to ``size``² (None: the latent's size) → divided by its per-image maximum.
    Returns ``(N, 1, size, size)`` in [0, 1] (all zero where ``A`` is), differentiable in ``h_1``."""
    n, k, h, w = fake_half.shape
    alpha = torch.sign(fake_half).detach().flatten(2).mean(2) / (k * h * w)  # (N, K): constant in h_1, as Grad-CAM
    cam = torch.relu((alpha[:, :, None, None] * fake_half).sum(1, keepdim=True))
    if size is not None and (h, w) != (size, size):
        cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)
    peak = cam.flatten(1).amax(1).clamp_min(torch.finfo(cam.dtype).tiny)
    return cam / peak[:, None, None, None]


def locality_loss(attention: torch.Tensor, mask: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """``L_loc``: the mean over the ``chosen`` images (bool ``(N,)``) of ``mean_p Â_p (1 − m_p)``, the normalised
    attention ``(N, 1, S, S)`` in [0, 1] spent outside the manipulation mask ``(N, 1, S, S)`` in {0, 1}; 0 (a
    zero tensor) when no image is chosen. In [0, 1]. Raises ValueError when the shapes differ."""
    if attention.shape != mask.shape:
        raise ValueError(f"attention {tuple(attention.shape)} and mask {tuple(mask.shape)} differ in shape")
    if not bool(chosen.any()):
        return attention.new_zeros(())
    outside = (attention * (1 - mask.to(attention.dtype))).flatten(1).mean(1)
    return outside[chosen].mean()


def sample_keys(batch: Mapping[str, Any]) -> torch.Tensor:
    """One int64 key per image from its identity (``method``, ``compression``, ``video``, ``frame`` of a
    :class:`emdlib.data.datasets.ManipulationDataset` batch): the first 8 bytes of BLAKE2b, so the same image has
    the same key in every process and run. Raises KeyError naming the missing field."""
    fields = ("method", "compression", "video", "frame")
    missing = [f for f in fields if f not in batch]
    if missing:
        raise KeyError(f"LAE needs each image's identity to find its mask's selection; the batch lacks {missing}")
    frames = batch["frame"].tolist() if torch.is_tensor(batch["frame"]) else list(batch["frame"])
    keys = []
    for method, comp, video, frame in zip(batch["method"], batch["compression"], batch["video"], frames):
        digest = hashlib.blake2b(f"{method}\x1f{comp}\x1f{video}\x1f{int(frame)}".encode(), digest_size=8).digest()
        keys.append(int.from_bytes(digest, "little", signed=True))
    return torch.tensor(keys, dtype=torch.int64)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """``H(p) = −p ln p − (1 − p) ln(1 − p)`` in nats (0 at p ∈ {0, 1}, ln 2 at 0.5), element-wise."""
    p = p.double()
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def selection_epochs(total_epochs: int, rounds: int) -> list[int]:
    """The (0-based) epochs at whose start a selection round runs: ``round(r·T/(R+1))`` (halves up) for ``r = 1 …
    R``, kept within ``[1, T−1]`` so that each round follows some training, merged where they coincide. One
    epoch (``T = 1``) leaves no such epoch: the one round then runs before it. Raises ValueError for ``T < 1`` or
    ``R < 1``."""
    if total_epochs < 1 or rounds < 1:
        raise ValueError(f"need at least one epoch and one round, got {total_epochs} epochs, {rounds} rounds")
    if total_epochs == 1:
        return [0]
    return sorted({min(total_epochs - 1, max(1, math.floor(r * total_epochs / (rounds + 1) + 0.5)))
                   for r in range(1, rounds + 1)})


def choose_uncertain(keys: torch.Tensor, entropy: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` keys of highest ``entropy`` (ties: smaller key first), as int64 ``(min(k, n),)``."""
    if k <= 0 or keys.numel() == 0:
        return keys.new_zeros(0)
    by_key = torch.argsort(keys, stable=True)
    order = by_key[torch.argsort(-entropy[by_key], stable=True)]
    return keys[order[:k]]


class LAE(DetectorNet):
    """The locality-aware autoencoder (module docstring).

    ``input_size``: the side the shared input is resized to (a multiple of 16; default 256). ``mask_fraction`` in
    [0, 1]: share of the training images that get a mask; ``selection_rounds`` ≥ 1: active-learning rounds;
    ``activation_weight``, ``locality_weight``: λ_act, λ_loc; ``max_masks``: capacity of the selection state.

    Output: ``DetectorOutput(logits (N, 2) = (a_0, a_1), mask_logits None, extras={"latent": (N, 128, S/16, S/16),
    "reconstructions": (N, 2, 3, S, S) decoded from the real (0) and the fake (1) half, "input": (N, 3, S, S)})``.
    """

    def __init__(self, input_size: int = INPUT_SIZE, mask_fraction: float = MASK_FRACTION,
                 selection_rounds: int = SELECTION_ROUNDS, activation_weight: float = ACTIVATION_WEIGHT,
                 locality_weight: float = LOCALITY_WEIGHT, max_masks: int = MAX_MASKS):
        super().__init__()
        if input_size < DOWNSAMPLING or input_size % DOWNSAMPLING:
            raise ValueError(f"LAE input size must be a positive multiple of {DOWNSAMPLING} (the encoder halves it "
                             f"four times), got {input_size}")
        if not 0.0 <= mask_fraction <= 1.0:
            raise ValueError(f"mask_fraction must lie in [0, 1], got {mask_fraction}")
        if selection_rounds < 1 or max_masks < 1:
            raise ValueError(f"selection_rounds and max_masks must be at least 1, got {selection_rounds}, "
                             f"{max_masks}")
        self.input_size = input_size
        self.mask_fraction = float(mask_fraction)
        self.selection_rounds = int(selection_rounds)
        self.activation_weight = float(activation_weight)
        self.locality_weight = float(locality_weight)
        self.encoder = Encoder(3)
        self.decoder = Decoder(3, "tanh")
        self.register_buffer("labelled_keys", torch.zeros(int(max_masks), dtype=torch.int64))
        self.register_buffer("num_labelled", torch.zeros((), dtype=torch.int64))

    # ------------------------------------------------------------------------------------------------ network

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """Shared input ``(N, 3, S, S)`` in [−1, 1] → the network's input and reconstruction target: the same range
        at ``input_size``²."""
        return inputs.resize(image, self.input_size)

    def forward(self, image: torch.Tensor, fer_image: torch.Tensor | None = None) -> DetectorOutput:
        x = self.normalise(image)
        latent = self.encoder(x)
        n = latent.shape[0]
        # (2N, C, h, w): image i's latent with only its real half, then with only its fake half
        halves = select_half(latent.repeat_interleave(HALVES, 0),
                             torch.arange(HALVES, device=latent.device).repeat(n))
        recon = self.decoder(halves).unflatten(0, (n, HALVES))
        return DetectorOutput(logits=activations_to_logits(activations(latent)),
                              extras={"latent": latent, "reconstructions": recon, "input": x})

    # ------------------------------------------------------------------------------------------------- losses

    def chosen(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Bool ``(N,)``: the batch's fakes whose mask the active learning has chosen (all False before the first
        round; the batch's identity fields are then not needed)."""
        label = batch["label"]
        n = int(self.num_labelled)
        if n == 0:
            return torch.zeros(len(label), dtype=torch.bool, device=label.device)
        keys = sample_keys(batch).to(self.labelled_keys.device)
        return (torch.isin(keys, self.labelled_keys[:n]) & (label.to(keys.device) == 1)).to(label.device)

    def compute_loss(self, output: DetectorOutput, batch: Mapping[str, Any]
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``L = L_rec + λ_act·L_act + λ_loc·L_loc`` (module docstring, :func:`lae_loss`) with its parts and
        ``mask_fraction``, the share of the batch's images whose mask entered ``L_loc``."""
        return lae_loss(output, batch, self.chosen(batch), self.activation_weight, self.locality_weight)

    # ----------------------------------------------------------------------------------------- active learning

    def select_samples(self, epoch: int, total_epochs: int, batches: Iterable[Mapping[str, Any]]) -> None:
        """One active-learning round when ``epoch`` (0-based) is one of :func:`selection_epochs`, else nothing.

        ``batches``: the training split (``image``, ``label`` and the identity fields of :func:`sample_keys`).
        The network predicts every image (eval mode, no gradient); the fakes without a mask yet are ranked by the
        binary entropy of ``P(fake)`` and the most uncertain are added to the chosen set until it holds
        ``round(mask_fraction · N · i / R')`` images after round ``i`` of the ``R'`` scheduled rounds (N: all images
        of the pass). Raises ValueError when the budget exceeds ``max_masks``.
        """
        schedule = selection_epochs(total_epochs, self.selection_rounds)
        if epoch not in schedule or self.mask_fraction == 0:
            return
        device = self.labelled_keys.device
        was_training = self.training
        self.eval()
        n_labelled = int(self.num_labelled)
        done = self.labelled_keys[:n_labelled]
        keys, scores, total = [], [], 0
        try:
            with torch.no_grad():
                for batch in tqdm(batches, desc=f"LAE selection (epoch {epoch + 1})", leave=False, disable=None):
                    image = batch["image"].to(device)
                    label = batch["label"].to(device)
                    total += len(label)
                    k = sample_keys(batch).to(device)
                    fresh = (label == 1) & ~torch.isin(k, done)
                    if bool(fresh.any()):
                        keys.append(k[fresh])
                        scores.append(binary_entropy(self(image).prob[fresh]))
        finally:
            self.train(was_training)
        i = schedule.index(epoch) + 1
        target = math.floor(self.mask_fraction * total * i / len(schedule) + 0.5)
        if target > self.labelled_keys.numel():
            raise ValueError(f"LAE: {target} masks wanted ({self.mask_fraction:.1%} of {total} images) but the "
                             f"selection state holds {self.labelled_keys.numel()} (raise max_masks)")
        pool_keys = torch.cat(keys) if keys else torch.zeros(0, dtype=torch.int64, device=device)
        pool_scores = torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64, device=device)
        new = choose_uncertain(pool_keys, pool_scores, target - n_labelled)
        self.labelled_keys[n_labelled:n_labelled + len(new)] = new
        self.num_labelled.fill_(n_labelled + len(new))
        log.info("LAE active learning, round %d/%d before epoch %d: %d masks added by uncertainty, %d in all "
                 "(%.2f%% of %d training images)", i, len(schedule), epoch + 1, len(new), int(self.num_labelled),
                 100 * int(self.num_labelled) / max(total, 1), total)


def lae_loss(output: DetectorOutput, batch: Mapping[str, Any], chosen: torch.Tensor,
             activation_weight: float = ACTIVATION_WEIGHT, locality_weight: float = LOCALITY_WEIGHT
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LAE's training loss on a forward pass of :class:`LAE` (module docstring).

    ``L_rec``: mean |x − x̂_y| with ``x̂_y`` the reconstruction from the label's half (``extras["reconstructions"]``
    ``(N, 2, 3, S, S)``, ``extras["input"]``); ``L_act``: :func:`activation_loss` on ``output.logits``; ``L_loc``:
    :func:`locality_loss` of :func:`gradcam_map` (fake half of ``extras["latent"]``, at the input size) against
    ``batch["mask"]`` resized to it (nearest), over the ``chosen`` images (bool ``(N,)``). Returns ``(L, {"loss_rec",
    "loss_act", "loss_locality", "mask_fraction"})`` (parts detached)."""
    x, recon, latent = output.extras["input"], output.extras["reconstructions"], output.extras["latent"]
    label = batch["label"].long()
    picked = recon[torch.arange(len(label), device=recon.device), label.to(recon.device)]
    loss_rec = (picked.float() - x.float()).abs().mean()
    loss_act = activation_loss(output.logits.float(), label)
    if bool(chosen.any()):
        size = x.shape[-1]
        attention = gradcam_map(latent[chosen.to(latent.device)][:, latent.shape[1] // 2:].float(), size)
        mask = inputs.resize(batch["mask"][chosen].float(), size, mode="nearest")
        loss_loc = locality_loss(attention, mask, torch.ones(len(mask), dtype=torch.bool, device=mask.device))
    else:
        loss_loc = loss_rec.new_zeros(())
    loss = loss_rec + activation_weight * loss_act + locality_weight * loss_loc
    return loss, {"loss_rec": loss_rec.detach(), "loss_act": loss_act.detach(),
                  "loss_locality": loss_loc.detach(),
                  "mask_fraction": chosen.float().mean().detach().to(loss.device)}

