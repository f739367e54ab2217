"""headstudio's procedural FLAME-format head model.

FLAME is licensed, so tests, benchmarks and the README's default run use this model: a
human head built from a parametric surface with hand-placed features (skull, brow ridge,
eye sockets with eyeballs, nose, lips around a mouth slit with an interior and teeth,
chin, jaw, ears, neck). It is written with the official file's keys, dtypes and layouts
(chumpy-style arrays, a sparse ``J_regressor``) so it loads through the same code path as
the real ``generic_model.pkl``, with a DECA-style landmark embedding and region masks.

Coordinates are FLAME's: metres, y up, the face looking along +z, the subject's left at
+x. The mesh is made of parts (``part_ids``): skin, left/right eyeball, mouth interior,
upper/lower teeth, left/right ear. The part ids are not part of the FLAME layout; the
synthetic renderer recomputes them with :func:`build_template` (deterministic).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstudio.flame.constants import LANDMARK_FILENAME, LANDMARK_WITH_EYES_FILENAME, MASKS_FILENAME, MEDIAPIPE_EMBEDDING_FILENAME
from headstudio.flame.procedural.annotations import _landmark_embedding, _region_masks, with_iris
from headstudio.flame.procedural.bases import (
    EXPRESSION_NAMES,
    NUM_EXPRESSION,
    NUM_SHAPE,
    SHAPE_NAMES,
    _expression_basis,
    _joint_regressor,
    _pose_correctives,
    _shape_basis,
    _skinning_weights,
)
from headstudio.flame.procedural.template import (
    APERTURE_DEPTH,
    EAR_L,
    EAR_R,
    EYE_L,
    EYE_R,
    EYE_RADIUS,
    EYE_X,
    EYE_Y,
    GLOBAL_JOINT_Y,
    HEAD_CENTER,
    MOUTH,
    MOUTH_HALF_WIDTH,
    NECK_BOTTOM_Y,
    NECK_JOINT_Y,
    NOSE_TIP_Y,
    SKIN,
    TEETH_LOW,
    TEETH_UP,
    Template,
    build_template,
    vertex_normals,
)

__all__ = [
    "APERTURE_DEPTH",
    "EAR_L",
    "EAR_R",
    "EXPRESSION_NAMES",
    "EYE_L",
    "EYE_R",
    "EYE_RADIUS",
    "EYE_X",
    "EYE_Y",
    "GLOBAL_JOINT_Y",
    "HEAD_CENTER",
    "MOUTH",
    "MOUTH_HALF_WIDTH",
    "NECK_BOTTOM_Y",
    "NECK_JOINT_Y",
    "NOSE_TIP_Y",
    "NUM_EXPRESSION",
    "NUM_SHAPE",
    "SHAPE_NAMES",
    "SKIN",
    "TEETH_LOW",
    "TEETH_UP",
    "ProceduralFlame",
    "Template",
    "build_template",
    "make_procedural_flame",
    "vertex_normals",
    "write_procedural_flame",
]


@dataclass
class ProceduralFlame:
    model: dict  # official generic_model.pkl layout
    landmarks: dict  # DECA landmark_embedding.npy layout
    masks: dict  # FLAME_masks.pkl layout
    template: Template


def make_procedural_flame(seed: int = 0, num_shape: int = NUM_SHAPE, num_expression: int = NUM_EXPRESSION) -> ProceduralFlame:
    """Build the procedural model; the seed varies the random tails of the bases."""
    if num_expression < len(EXPRESSION_NAMES) or num_shape < len(SHAPE_NAMES):
        raise ValueError(f"need at least {len(SHAPE_NAMES)} shape and {len(EXPRESSION_NAMES)} expression components")
    t = build_template()
    rng = np.random.default_rng(seed)
    normals = vertex_normals(t.vertices, t.faces)
    weights = _skinning_weights(t)
    regressor = _joint_regressor(t)
    posedirs = _pose_correctives(t, weights, normals)
    shapedirs = np.concatenate([_shape_basis(t, rng, num_shape), _expression_basis(t, rng, num_expression)], axis=2)
    import scipy.sparse

    model = {
        "v_template": t.vertices.astype(np.float64),
        "f": t.faces.astype(np.uint32),
        "weights": weights.astype(np.float64),
        "posedirs": posedirs.astype(np.float64),
        "shapedirs": shapedirs.astype(np.float64),
        "J_regressor": scipy.sparse.csc_matrix(regressor),
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "J": (regressor @ t.vertices).astype(np.float64),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        # Not an official key (official loaders ignore it): the viewer's Drive sliders read their labels here.
        "expression_names": list(EXPRESSION_NAMES) + [f"expression {k}" for k in range(len(EXPRESSION_NAMES), num_expression)],
    }
    return ProceduralFlame(model, _landmark_embedding(t, normals), _region_masks(t, weights), t)


def write_procedural_flame(
    out_path: os.PathLike | str, seed: int = 0, overwrite: bool = False, mediapipe_embedding: bool = True
) -> list[Path]:
    """Write ``generic_model.pkl``-style model, ``landmark_embedding.npy``, ``FLAME_masks.pkl`` and
    ``landmark_embedding_with_eyes.npy`` (IMavatar's 70-point embedding: the 68 plus two irises) and
    ``mediapipe_landmark_embedding.npz`` (where mediapipe's face-mesh points lie, for hs-track: the shipped
    calibration, :mod:`headstudio.track.mediapipe_embedding`; the same for every seed; left out with
    ``mediapipe_embedding=False``, as the calibration itself does).

    The companions are written beside ``out_path`` with their official names. Every file
    is written to a temporary name first, then renamed.
    """
    import pickle

    from headstudio.flame.official_writer import dump_official_style
    from headstudio.utils.atomic import atomic_path

    out_path = Path(out_path)
    targets = [
        out_path,
        out_path.with_name(LANDMARK_FILENAME),
        out_path.with_name(MASKS_FILENAME),
        out_path.with_name(LANDMARK_WITH_EYES_FILENAME),
    ] + ([out_path.with_name(MEDIAPIPE_EMBEDDING_FILENAME)] if mediapipe_embedding else [])
    if not overwrite:
        for p in targets:
            if p.exists():
                raise FileExistsError(f"{p}: already exists; choose another path or remove it")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    flame = make_procedural_flame(seed)
    dump_official_style(flame.model, out_path)
    with atomic_path(targets[1]) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.array(flame.landmarks, dtype=object), allow_pickle=True)
    with atomic_path(targets[2]) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump(flame.masks, fh, protocol=2)
    with atomic_path(targets[3]) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.array(with_iris(flame.landmarks, flame.template), dtype=object), allow_pickle=True)
    if mediapipe_embedding:
        with atomic_path(targets[4]) as tmp:
            tmp.write_bytes((Path(__file__).resolve().parent / MEDIAPIPE_EMBEDDING_FILENAME).read_bytes())
    return targets
