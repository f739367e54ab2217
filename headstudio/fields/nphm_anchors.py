"""The 65 facial anchors of MonoNPHM's local ensemble, laid out on a FLAME-format mesh.

MonoNPHM (Giebenhain et al. 2024, §3.1, supp. B.1) centres its local MLPs on 65 anchors laid out
so that the most important landmarks of common detectors coincide with anchors; 30 pairs are
mirror images of each other (a pair shares one MLP with mirrored input) and 5 lie on the midline.
The authors' vertex list indexes FLAME's 5,023-vertex topology; headstudio builds its layout from
what every FLAME-format model carries, so that it works on the official model and on the
procedural one alike:

- 17 pairs and all 5 midline anchors are iBUG-68 landmarks (the nearest vertex to the landmark
  on the neutral mesh): jaw line 0/16, 2/14, 4/12, 6/10; brows 17/26, 19/24, 21/22; nostrils 31/35;
  eyes 36/45, 37/44, 38/43, 39/42, 40/47, 41/46; mouth 48/54, 50/52, 58/56; midline: chin 8, nose
  tip 30, nose base 33, upper lip 51, lower lip 57.
- 13 pairs cover the rest of the head (forehead, temples, cheeks, ears, scalp, back of the head,
  neck): in each, the vertex of a region (``FLAME_masks`` names) whose direction from the head
  centre (midway between the ears) best matches a fixed direction, and its mirror partner (the
  vertex nearest to it mirrored in x).

Order: pair ``i`` is anchors ``2i`` (the subject's right, x < 0) and ``2i + 1``; the midline anchors
are 60..64. The layout is computed once from the neutral mesh and kept as vertex ids, so the
ground-truth anchors of any posed registration of the same topology are ``vertices[ids]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jaxtyping import Float, Int

NUM_ANCHORS = 65
NUM_PAIRS = 30
LANDMARK_PAIRS = (
    (0, 16), (2, 14), (4, 12), (6, 10), (17, 26), (19, 24), (21, 22), (31, 35),
    (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46), (48, 54), (50, 52), (58, 56),
)  # fmt: skip
"""iBUG-68 landmark pairs (the subject's right first) that become anchor pairs."""
LANDMARK_MIDLINE = (8, 30, 33, 51, 57)
"""iBUG-68 landmarks on the midline that become anchors 60..64."""
REGION_PAIRS = (
    ("forehead", "forehead", (-0.50, 0.45, 0.75)),
    ("forehead", "forehead", (-0.20, 0.75, 0.62)),
    ("scalp", "scalp", (-0.92, 0.30, 0.25)),  # temple
    ("face", "face", (-0.55, -0.05, 0.83)),  # upper cheek
    ("face", "face", (-0.72, -0.40, 0.55)),  # lower cheek
    ("right_ear", "left_ear", (-0.85, 0.50, 0.00)),  # top of the ear
    ("right_ear", "left_ear", (-0.80, -0.55, 0.00)),  # ear lobe
    ("scalp", "scalp", (-0.40, 0.90, -0.10)),
    ("scalp", "scalp", (-0.75, 0.30, -0.55)),
    ("scalp", "scalp", (-0.30, 0.45, -0.85)),
    ("scalp", "scalp", (-0.35, -0.10, -0.93)),
    ("neck", "neck", (-0.55, -0.60, 0.55)),
    ("neck", "neck", (-0.55, -0.70, -0.45)),
)
"""(region of the right anchor, region of its partner, direction from the head centre)."""


@dataclass(frozen=True)
class AnchorLayout:
    vertex_ids: Int[np.ndarray, "65"]
    """Anchor k is vertex ``vertex_ids[k]``."""
    num_pairs: int = NUM_PAIRS
    """Anchors ``2i, 2i + 1`` (i < num_pairs) are mirror pairs; the rest lie on the midline."""

    @property
    def mirrored(self) -> np.ndarray:
        """True for the anchors whose local coordinates are mirrored in x (the partner of each pair)."""
        out = np.zeros(len(self.vertex_ids), dtype=bool)
        out[1 : 2 * self.num_pairs : 2] = True
        return out

    @property
    def mlp_of_anchor(self) -> np.ndarray:
        """The local MLP each anchor uses: pairs share one."""
        k = np.arange(len(self.vertex_ids))
        return np.where(k < 2 * self.num_pairs, k // 2, k - self.num_pairs)

    @property
    def num_mlps(self) -> int:
        return len(self.vertex_ids) - self.num_pairs


def _nearest(vertices: np.ndarray, point: np.ndarray, allowed: np.ndarray | None = None) -> int:
    d = np.linalg.norm(vertices - point, axis=-1)
    if allowed is not None:
        d = np.where(allowed, d, np.inf)
    return int(np.argmin(d))


def build_anchor_layout(
    neutral: Float[np.ndarray, "V 3"], landmarks: Float[np.ndarray, "68 3"], regions: dict[str, np.ndarray]
) -> AnchorLayout:
    """The layout on a neutral mesh, from its 68 landmarks and its FLAME region masks."""
    missing = {r for a, b, _ in REGION_PAIRS for r in (a, b)} - set(regions)
    if missing:
        raise ValueError(f"the anchor layout needs the FLAME regions {sorted(missing)}, which the model's masks lack")
    ids: list[int] = []
    for a, b in LANDMARK_PAIRS:
        ids += [_nearest(neutral, landmarks[a]), _nearest(neutral, landmarks[b])]
    mask = lambda name: np.isin(np.arange(len(neutral)), regions[name])  # noqa: E731
    centre = 0.5 * (neutral[regions["left_ear"]].mean(0) + neutral[regions["right_ear"]].mean(0))
    unit = (neutral - centre) / np.linalg.norm(neutral - centre, axis=-1, keepdims=True).clip(1e-12)
    for right, left, direction in REGION_PAIRS:
        d = np.asarray(direction) / np.linalg.norm(direction)
        score = np.where(mask(right) & ~np.isin(np.arange(len(neutral)), ids), unit @ d, -np.inf)
        r = int(np.argmax(score))
        partner = neutral[r] * np.array([-1.0, 1.0, 1.0])
        ids += [r, _nearest(neutral, partner, mask(left))]
    ids += [_nearest(neutral, landmarks[m]) for m in LANDMARK_MIDLINE]
    out = np.asarray(ids, dtype=np.int64)
    if len(np.unique(out)) != NUM_ANCHORS:
        raise ValueError("two anchors fell on the same vertex: the mesh is too coarse for the 65-anchor layout")
    return AnchorLayout(out)


def anchor_landmark_pairs() -> tuple[list[int], list[int]]:
    """(anchor index, iBUG-68 landmark index) of every anchor placed on a detector landmark
    (pair ``i`` is anchors ``2i, 2i+1``, the midline 60..64)."""
    anchors, landmarks = [], []
    for i, (a, b) in enumerate(LANDMARK_PAIRS):
        anchors += [2 * i, 2 * i + 1]
        landmarks += [a, b]
    for k, m in enumerate(LANDMARK_MIDLINE):
        anchors.append(2 * NUM_PAIRS + k)
        landmarks.append(m)
    return anchors, landmarks
