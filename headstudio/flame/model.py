"""The FLAME head model as a batched torch module."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from headstudio.flame.files import (
    LANDMARK_FILENAME,
    MASKS_FILENAME,
    FlameArrays,
    LandmarkEmbedding,
    load_flame_arrays,
    load_landmark_embedding,
    load_region_masks,
    sibling,
)
from headstudio.flame.lbs import axis_angle_to_matrix, lbs, pose_feature

POSE_DIM = 15
"""global, neck, jaw, left eye, right eye axis-angle (IMavatar's ``pose`` layout)."""


@dataclass
class FlameOutput:
    vertices: Float[Tensor, "B V 3"]
    """Posed vertices (translation applied)."""
    joints: Float[Tensor, "B J 3"]
    """Posed joints (translation applied)."""
    landmarks: Float[Tensor, "B 68 3"]
    """iBUG-68 landmarks: 17 dynamic contour + 51 static (DECA convention)."""
    transforms: Float[Tensor, "B J 4 4"]
    """Per-joint skinning transforms, translation included."""
    rest_vertices: Float[Tensor, "B V 3"]
    """Shaped and expressed vertices before pose correctives and skinning."""
    rest_joints: Float[Tensor, "B J 3"]


def faces_points(
    vertices: Float[Tensor, "B V 3"], faces: Int[Tensor, "F 3"], face_ids: Int[Tensor, "*L"], bary: Float[Tensor, "*L 3"]
) -> Float[Tensor, "B *L 3"]:
    """Points on the mesh given by face ids and barycentric coordinates."""
    tri = vertices[:, faces[face_ids]]  # B *L 3 3
    return (tri * bary[None, ..., None]).sum(-2)


def dynamic_contour_bins(rot_mats: Float[Tensor, "B J 3 3"]) -> Int[Tensor, "B"]:
    """Row of the 79-row dynamic contour table for each frame (DECA convention).

    The yaw of the head relative to the camera is read from the rotation of the global
    and neck joints; rows 0..39 hold yaw 0..39 degrees, rows 40..78 yaw -1..-39.
    """
    rel = rot_mats[:, 0] @ rot_mats[:, 1]
    # Yaw about the y axis from an XYZ Euler decomposition.
    yaw = torch.asin((-rel[:, 2, 0]).clamp(-1.0, 1.0))
    deg = torch.round(torch.rad2deg(-yaw)).clamp(-39, 39).long()
    return torch.where(deg < 0, 39 - deg, deg)


class FlameModel(nn.Module):
    """Batched FLAME: shape, expression, pose, translation -> mesh, joints, landmarks.

    ``num_shape`` / ``num_expression`` choose how many leading components of the file's
    identity and expression bases are used (IMavatar uses 100 / 50). Buffers are float32.
    """

    def __init__(
        self,
        arrays: FlameArrays,
        landmarks: Optional[LandmarkEmbedding] = None,
        region_masks: Optional[dict[str, np.ndarray]] = None,
        num_shape: int = 100,
        num_expression: int = 50,
    ) -> None:
        super().__init__()
        if num_shape > arrays.num_shape_total:
            raise ValueError(f"num_shape={num_shape} but the model has {arrays.num_shape_total} shape components")
        if num_expression > arrays.num_expression_total:
            raise ValueError(
                f"num_expression={num_expression} but the model has {arrays.num_expression_total} expression components"
            )
        self.num_shape = num_shape
        self.num_expression = num_expression
        self.parents = tuple(arrays.parents)
        f32 = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
        s0 = arrays.num_shape_total
        self.register_buffer("v_template", f32(arrays.v_template), persistent=False)
        self.register_buffer("faces", torch.as_tensor(arrays.faces, dtype=torch.long), persistent=False)
        self.register_buffer("weights", f32(arrays.weights), persistent=False)
        self.register_buffer("posedirs", f32(arrays.posedirs), persistent=False)
        self.register_buffer("shapedirs", f32(arrays.shapedirs[:, :, :num_shape]), persistent=False)
        self.register_buffer("exprdirs", f32(arrays.shapedirs[:, :, s0 : s0 + num_expression]), persistent=False)
        self.register_buffer("J_regressor", f32(arrays.J_regressor), persistent=False)
        self.has_landmarks = landmarks is not None
        if landmarks is not None:
            lm = landmarks
            self.register_buffer("lmk_static_faces", torch.as_tensor(lm.static_faces), persistent=False)
            self.register_buffer("lmk_static_bary", f32(lm.static_bary), persistent=False)
            self.register_buffer("lmk_dynamic_faces", torch.as_tensor(lm.dynamic_faces), persistent=False)
            self.register_buffer("lmk_dynamic_bary", f32(lm.dynamic_bary), persistent=False)
            self.register_buffer("lmk_full_faces", torch.as_tensor(lm.full_faces), persistent=False)
            self.register_buffer("lmk_full_bary", f32(lm.full_bary), persistent=False)
            if lm.has_iris:
                self.register_buffer("lmk_iris_faces", torch.as_tensor(lm.iris_faces), persistent=False)
                self.register_buffer("lmk_iris_bary", f32(lm.iris_bary), persistent=False)
        self.region_masks = dict(region_masks or {})
        self.expression_names = tuple(arrays.expression_names[:num_expression])
        """Names of the used expression components where the file has them (headstudio's procedural model), else ()."""

    def expression_label(self, k: int) -> str:
        """A viewer label for expression component ``k``: its name, else ``"expression k"``."""
        return self.expression_names[k].replace("_", " ") if k < len(self.expression_names) else f"expression {k}"

    @classmethod
    def from_file(
        cls,
        model_path: os.PathLike | str,
        landmark_path: Optional[os.PathLike | str] = None,
        masks_path: Optional[os.PathLike | str] = None,
        num_shape: int = 100,
        num_expression: int = 50,
    ) -> "FlameModel":
        """Load a model file; companion files default to siblings with the official names.

        ``landmark_path`` may be DECA's 68-point ``landmark_embedding.npy`` or IMavatar's
        70-point ``landmark_embedding_with_eyes.npy`` (then :attr:`has_iris`);
        ``masks_path`` may be ``FLAME_masks.pkl``, INSTA's ``flame_masks/`` folder of text
        lists, or one such list (see :func:`~headstudio.flame.files.load_region_masks`).
        """
        arrays = load_flame_arrays(model_path)
        lmk_path = Path(landmark_path) if landmark_path else sibling(model_path, LANDMARK_FILENAME)
        msk_path = Path(masks_path) if masks_path else sibling(model_path, MASKS_FILENAME)
        landmarks = None
        if landmark_path or lmk_path.exists():
            landmarks = load_landmark_embedding(lmk_path, num_faces=arrays.faces.shape[0])
        masks = None
        if masks_path or msk_path.exists():
            masks = load_region_masks(msk_path, num_vertices=arrays.num_vertices)
        return cls(arrays, landmarks, masks, num_shape=num_shape, num_expression=num_expression)

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    @property
    def has_iris(self) -> bool:
        """Whether the landmark embedding has IMavatar's 2 iris points (a 70-point file)."""
        return hasattr(self, "lmk_iris_faces")

    def _batch(self, tensor: Optional[Tensor], batch: int, dim: int) -> Tensor:
        if tensor is None:
            return self.v_template.new_zeros(batch, dim)
        tensor = tensor.to(self.v_template)
        if tensor.dim() == 1:
            tensor = tensor.unsqueeze(0)
        if tensor.shape[-1] < dim:  # fewer components than the model uses: pad with zeros
            tensor = torch.cat([tensor, tensor.new_zeros(tensor.shape[0], dim - tensor.shape[-1])], -1)
        elif tensor.shape[-1] > dim:
            raise ValueError(f"got {tensor.shape[-1]} coefficients but the model uses {dim}")
        return tensor.expand(batch, -1) if tensor.shape[0] == 1 else tensor

    def rest_mesh(
        self, shape: Optional[Tensor] = None, expression: Optional[Tensor] = None, batch: int = 1
    ) -> tuple[Float[Tensor, "B V 3"], Float[Tensor, "B J 3"]]:
        """Shaped and expressed template, and the joints regressed from it."""
        shape = self._batch(shape, batch, self.num_shape)
        expression = self._batch(expression, batch, self.num_expression)
        verts = (
            self.v_template
            + torch.einsum("bk,vck->bvc", shape, self.shapedirs)
            + torch.einsum("bk,vck->bvc", expression, self.exprdirs)
        )
        joints = torch.einsum("jv,bvc->bjc", self.J_regressor, verts)
        return verts, joints

    def forward(
        self,
        shape: Optional[Float[Tensor, "B S"]] = None,
        expression: Optional[Float[Tensor, "B E"]] = None,
        pose: Optional[Float[Tensor, "B 15"]] = None,
        translation: Optional[Float[Tensor, "B 3"]] = None,
    ) -> FlameOutput:
        """Batched FLAME; any argument may be omitted (zeros) or given for one frame."""
        batch = max((t.shape[0] if t is not None and t.dim() == 2 else 1) for t in (shape, expression, pose, translation))
        pose = self._batch(pose, batch, 3 * len(self.parents))
        translation = self._batch(translation, batch, 3)
        rest_verts, rest_joints = self.rest_mesh(shape, expression, batch)
        rot_mats = axis_angle_to_matrix(pose.reshape(batch, -1, 3))
        verts, transforms = lbs(
            rest_verts, self.weights, rot_mats, rest_joints, self.parents, pose_dirs=self.posedirs
        )
        transforms = transforms.clone()
        transforms[:, :, :3, 3] += translation[:, None]
        verts = verts + translation[:, None]
        joints = transforms[:, :, :3, :3] @ rest_joints[..., None]
        joints = joints[..., 0] + transforms[:, :, :3, 3]
        landmarks = self.landmarks(verts, rot_mats) if self.has_landmarks else verts.new_zeros(batch, 68, 3)
        return FlameOutput(verts, joints, landmarks, transforms, rest_verts, rest_joints)

    def landmarks(
        self, vertices: Float[Tensor, "B V 3"], rot_mats: Float[Tensor, "B J 3 3"], faces: Optional[Int[Tensor, "F 3"]] = None
    ) -> Float[Tensor, "B 68 3"]:
        """68 landmarks: the contour row chosen by head yaw, then the 51 static ones. ``faces``: the mesh's faces
        as indices into ``vertices`` (default the model's; a vertex subset passes its re-indexed faces)."""
        faces = self.faces if faces is None else faces
        bins = dynamic_contour_bins(rot_mats)
        dyn_faces = self.lmk_dynamic_faces[bins]  # B 17
        dyn_bary = self.lmk_dynamic_bary[bins]  # B 17 3
        frame = torch.arange(vertices.shape[0], device=vertices.device)[:, None, None]
        tri = vertices[frame, faces[dyn_faces]]  # B 17 3 3 (indexing: its gradient is B V 3, not B 17 V 3)
        contour = (tri * dyn_bary[..., None]).sum(-2)
        static = faces_points(vertices, faces, self.lmk_static_faces, self.lmk_static_bary)
        return torch.cat([contour, static], dim=1)

    def full_landmarks(self, vertices: Float[Tensor, "B V 3"]) -> Float[Tensor, "B 68 3"]:
        """68 landmarks from the fixed (non-dynamic) full embedding (iris points excluded)."""
        return faces_points(vertices, self.faces, self.lmk_full_faces, self.lmk_full_bary)

    def iris_landmarks(
        self, vertices: Float[Tensor, "B V 3"], faces: Optional[Int[Tensor, "F 3"]] = None
    ) -> Float[Tensor, "B 2 3"]:
        """The 2 iris points of a 70-point embedding, in the file's order.

        They are rows 68, 69 of IMavatar's tracked ``flame_keypoints`` (after the 17
        contour and 51 static points that :meth:`landmarks` returns). Raises
        :class:`ValueError` when the embedding has none (check :attr:`has_iris`).
        """
        if not self.has_iris:
            what = "a 68-point landmark embedding" if self.has_landmarks else "no landmark embedding"
            raise ValueError(
                f"this FLAME model has {what}, so no iris landmarks: load a 70-point embedding "
                "such as IMavatar's landmark_embedding_with_eyes.npy"
            )
        return faces_points(vertices, self.faces if faces is None else faces, self.lmk_iris_faces, self.lmk_iris_bary)

    def pose_feature(self, pose: Float[Tensor, "B 15"]) -> Float[Tensor, "B 36"]:
        return pose_feature(axis_angle_to_matrix(pose.reshape(pose.shape[0], -1, 3)))
