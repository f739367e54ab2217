"""FLAME fitted to 2-D landmarks of a video, batched over frames (hs-track's tracker).

The camera is an OpenGL pinhole at the origin looking along -z, principal point at the image centre;
the head is FLAME in world units (FLAME x ``WORLD_SCALE``, as IMavatar's) with its global rotation in
``pose[:3]`` and a per-frame translation. One shape and one focal length for the clip; per frame
expression, global / neck / jaw / eye rotations and translation. The loss is the landmarks' 2-D
reprojection (the 17 contour points by DECA's dynamic contour, :meth:`FlameModel.landmarks`; the
irises for gaze where the model has them), priors on shape, expression and the joints, and temporal
smoothness. Coarse to fine: the rigid head pose alone first, then everything.
"""

from __future__ import annotations

import math

import numpy as np
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from headstudio.flame.constants import WORLD_SCALE
from headstudio.flame.lbs import axis_angle_to_matrix, blend_shapes, pose_feature, rigid_transforms, skin_surface_points
from headstudio.flame.model import FlameModel, dynamic_contour_bins, faces_points

if TYPE_CHECKING:
    from headstudio.track.mediapipe_embedding import MediapipeEmbedding

CONTOUR = slice(0, 17)


@dataclass
class LandmarkFitConfig:
    """Weights and schedule of the landmark fit (ours: none of the source papers specifies hs-track)."""

    rigid_steps: int = 150
    """Adam steps on the global rotation and translation alone (stage 1)."""
    full_steps: int = 400
    """Adam steps on every parameter (stage 2)."""
    lr: float = 0.02
    """Adam learning rate (rotations in radians, translations in world units, codes in standard deviations)."""
    num_shape: int = 50
    """Shape components fitted (the rest stay 0); landmarks carry little identity beyond the first ones."""
    contour_weight: float = 0.3
    """Weight of the 17 contour landmarks relative to the inner ones: detectors place them least reliably."""
    iris_weight: float = 1.0
    """Weight of the two iris points (gaze)."""
    shape_prior: float = 1e-4
    """Weight of ||shape||^2 (unit-variance coefficients) against the mean squared landmark error in pixels
    of a 512-px image."""
    expression_prior: float = 1.0
    """Weight of ||expression||^2 (unit-variance coefficients). Measured on the dense fit (``bench/track.py``
    prints both, seed 0): 1e-4 left the expression error at 0.27 with landmarks at 2.70 px; 1 gives 0.18 and
    2.51 px (the detector's errors no longer bend the expressions as much)."""
    joint_prior: float = 1.0
    """Weight of ||neck||^2 + ||jaw yaw, roll||^2 + ||eyes||^2 (radians): the head's motion belongs in the
    global rotation, the jaw mostly opens."""
    smoothness: float = 1.0
    """Weight of squared differences between neighbouring frames (expression, rotations, translation x 10)."""
    focal: bool = True
    """Fit the focal length in stage 2 (one for the clip); else keep the initial one."""
    landmark_weight: float = 1.0
    """Weight of the 68 iBUG landmarks' term."""
    dense_weight: float = 1.0
    """Weight of the dense term: mediapipe's face-mesh points against their embedding on the mesh
    (:mod:`headstudio.track.mediapipe_embedding`), each also weighted by the embedding's confidence."""
    detector_bias: bool = True
    """Add the embedding's detector-bias offsets (where it has them: the shipped procedural
    one, or any calibrated by ``python -m headstudio.track.calibrate`` without ``--no-bias``) to the predicted dense points, as a function of each
    frame's fitted pose and expression."""
    photometric_steps: int = 0
    """Adam steps of the photometric refinement after the landmark stages (0: none; needs a
    :class:`~headstudio.track.photometric.PhotometricTarget`): the landmark loss plus the texture-constancy
    term, the focal held."""
    photometric_weight: float = 100.0
    """Weight of the photometric term (mean L1 over RGB in [0, 1]) against the landmark loss (squared pixels
    of a 512-px image)."""
    photometric_lr: float = 0.005
    """Adam learning rate of the photometric stage (it refines: smaller steps than the landmark stages)."""
    photometric_refresh: int = 10
    """Steps between recomputing the vertices' reference colours (visibility: at the start and halfway)."""


@dataclass
class LandmarkFit:
    """The fitted clip."""

    shape: Float[Tensor, "S"]
    expression: Float[Tensor, "T E"]
    pose: Float[Tensor, "T 15"]
    translation: Float[Tensor, "T 3"]
    """World units (FLAME x WORLD_SCALE): the head's position in the camera's (OpenGL) frame."""
    focal: float
    """Pixels."""
    principal: tuple[float, float]
    """The principal point the fit used (pixels)."""
    landmarks_px: Float[Tensor, "T 68 2"]
    """The fitted FLAME landmarks, projected (our pixel convention: centres at +0.5)."""
    iris_px: Optional[Float[Tensor, "T 2 2"]]
    error_px: Float[Tensor, "T"]
    """Mean 2-D distance of the fitted to the given landmarks per frame (NaN for frames without any)."""
    dense_px: Optional[Float[Tensor, "T K 2"]] = None
    """The fitted mesh's embedded mediapipe points, projected (when the fit had them)."""
    dense_error_px: Optional[Float[Tensor, "T"]] = None
    """Mean 2-D distance of those to the detected points per frame."""
    history: list = field(default_factory=list)


class LandmarkFlame(torch.nn.Module):
    """FLAME evaluated on the vertices its landmarks lie on only (static, every dynamic-contour row, irises,
    the dense points): the same landmarks as :meth:`FlameModel.landmarks` for a small part of the cost of
    the whole mesh. The blendshapes are applied to those vertices; only the points themselves are skinned
    (:func:`~headstudio.flame.lbs.skin_surface_points`). The joints come from the whole shaped mesh, through
    the regressor contracted with the bases once."""

    def __init__(
        self, flame: FlameModel, dense_faces: Optional[Tensor] = None, dense_bary: Optional[Tensor] = None
    ) -> None:
        super().__init__()
        groups = [flame.lmk_static_faces.reshape(-1), flame.lmk_dynamic_faces.reshape(-1)]
        if flame.has_iris:
            groups.append(flame.lmk_iris_faces.reshape(-1))
        self.has_dense = dense_faces is not None
        if self.has_dense:
            dense_faces = torch.as_tensor(dense_faces, dtype=torch.long, device=flame.faces.device)
            groups.append(dense_faces)
        used = torch.unique(flame.faces[torch.cat(groups)].reshape(-1))
        remap = torch.full((flame.num_vertices,), -1, dtype=torch.long, device=used.device)
        remap[used] = torch.arange(len(used), device=used.device)
        self.flame = flame
        self.parents = flame.parents
        self.has_iris = flame.has_iris
        self.register_buffer("faces", remap[flame.faces], persistent=False)  # -1 where a face leaves the subset
        if self.has_dense:
            self.register_buffer("dense_faces", dense_faces, persistent=False)
            self.register_buffer("dense_bary", torch.as_tensor(dense_bary).to(flame.v_template), persistent=False)
        fixed = [flame.lmk_static_faces.reshape(-1)], [flame.lmk_static_bary.reshape(-1, 3)]
        if flame.has_iris:
            fixed[0].append(flame.lmk_iris_faces.reshape(-1))
            fixed[1].append(flame.lmk_iris_bary.reshape(-1, 3))
        if self.has_dense:
            fixed[0].append(dense_faces)
            fixed[1].append(self.dense_bary)
        self.num_static = flame.lmk_static_faces.numel()
        self.register_buffer("fixed_faces", torch.cat(fixed[0]), persistent=False)  # static, irises, dense
        self.register_buffer("fixed_bary", torch.cat(fixed[1]).to(flame.v_template), persistent=False)
        self.register_buffer("v_template", flame.v_template[used], persistent=False)
        self.register_buffer("shapedirs", flame.shapedirs[used], persistent=False)
        self.register_buffer("exprdirs", flame.exprdirs[used], persistent=False)
        self.register_buffer("posedirs", flame.posedirs[used], persistent=False)
        self.register_buffer("weights", flame.weights[used], persistent=False)
        reg = flame.J_regressor
        self.register_buffer("j_template", reg @ flame.v_template, persistent=False)
        self.register_buffer("j_shapedirs", torch.einsum("jv,vck->jck", reg, flame.shapedirs), persistent=False)
        self.register_buffer("j_exprdirs", torch.einsum("jv,vck->jck", reg, flame.exprdirs), persistent=False)

    def forward(
        self, shape: Float[Tensor, "S"], expression: Float[Tensor, "B E"], pose: Float[Tensor, "B 15"],
        rigid: bool = False,
    ) -> tuple[Float[Tensor, "B 68 3"], Optional[Float[Tensor, "B 2 3"]], Optional[Float[Tensor, "B K 3"]]]:  # fmt: skip
        """Landmarks, the irises (where the model has them) and the dense embedded points (where given) of each
        frame, in FLAME units. ``rigid``: shape and expression are taken as zero and only the global rotation
        ``pose[:, :3]`` as set (the fit's first stage): the template turned about the root joint, which is
        what skinning gives then (no joint moves relative to the root, no pose correctives), for a fraction of
        the cost."""
        b = pose.shape[0]
        if rigid:
            rot_mats = axis_angle_to_matrix(pose.reshape(b, -1, 3))
            root = self.j_template[0]
            rest = self._points(self.v_template[None].expand(b, -1, -1), rot_mats)  # the contour row turns with yaw
            return tuple(None if x is None else torch.einsum("bij,bkj->bki", rot_mats[:, 0], x - root) + root for x in rest)
        full_shape = shape.new_zeros(self.shapedirs.shape[-1])
        full_shape[: shape.shape[0]] = shape
        rest = self.v_template + torch.einsum("k,vck->vc", full_shape, self.shapedirs)
        rest = rest[None] + torch.einsum("bk,vck->bvc", expression, self.exprdirs)
        joints = self.j_template + torch.einsum("k,jck->jc", full_shape, self.j_shapedirs)
        joints = joints[None] + torch.einsum("bk,jck->bjc", expression, self.j_exprdirs)
        rot_mats = axis_angle_to_matrix(pose.reshape(b, -1, 3))
        rest = rest + blend_shapes(pose_feature(rot_mats), self.posedirs)
        _, transforms = rigid_transforms(rot_mats, joints, self.parents)
        flame = self.flame
        bins = dynamic_contour_bins(rot_mats)
        contour = skin_surface_points(rest, self.weights, transforms, self.faces[flame.lmk_dynamic_faces[bins]],
                                      flame.lmk_dynamic_bary[bins])  # fmt: skip
        fixed = skin_surface_points(rest, self.weights, transforms, self.faces[self.fixed_faces], self.fixed_bary)
        landmarks = torch.cat([contour, fixed[:, : self.num_static]], 1)
        iris = fixed[:, self.num_static : self.num_static + 2] if self.has_iris else None
        dense = fixed[:, self.num_static + (2 if self.has_iris else 0) :] if self.has_dense else None
        return landmarks, iris, dense

    def _points(self, verts: Float[Tensor, "B V 3"], rot_mats: Float[Tensor, "B J 3 3"]):
        landmarks = self.flame.landmarks(verts, rot_mats, faces=self.faces)
        iris = self.flame.iris_landmarks(verts, faces=self.faces) if self.has_iris else None
        dense = faces_points(verts, self.faces, self.dense_faces, self.dense_bary) if self.has_dense else None
        return landmarks, iris, dense


class Adam:
    """Adam (Kingma and Ba 2015; as ``torch.optim.Adam`` without weight decay) for the fit's few tensors.
    ``torch.optim``'s first step imports ``torch._dynamo``, which took 1.7 s here: 6 % of hs-track's whole run
    on a 60-frame clip."""

    def __init__(self, params: list[Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.steps = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.steps, 1 - b2**self.steps
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.addcdiv_(m, (v.sqrt() / math.sqrt(c2)).add_(self.eps), value=-self.lr / c1)


def project(
    points: Float[Tensor, "*B N 3"], focal: Tensor, size: tuple[int, int], principal: Optional[tuple[float, float]] = None
) -> Float[Tensor, "*B N 2"]:
    """Pixels (x right, y down) of camera-space points under an OpenGL pinhole at the origin; the principal
    point (pixels) defaults to the image centre."""
    cx, cy = principal if principal is not None else (size[0] / 2, size[1] / 2)
    z = (-points[..., 2]).clamp_min(1e-6)
    return torch.stack([cx + focal * points[..., 0] / z, cy - focal * points[..., 1] / z], dim=-1)


def opencv_camera(
    vertices_gl: Float[Tensor, "*B V 3"], focal: float, principal: tuple[float, float], scale: float = 1.0
) -> tuple[Float[Tensor, "*B V 3"], Float[Tensor, "3 3"]]:
    """The fit's camera (OpenGL at the origin) as the rasterizer takes it: the vertices in OpenCV camera axes
    and the intrinsics, for an image ``scale`` times the size the focal and principal point are in."""
    cx, cy = principal
    K = torch.tensor([[focal * scale, 0.0, cx * scale], [0.0, focal * scale, cy * scale], [0.0, 0.0, 1.0]])
    return vertices_gl.float() * torch.tensor([1.0, -1.0, -1.0]), K


def initial_translation(
    landmarks_px: Float[Tensor, "T 68 2"], valid: Float[Tensor, "T 68"], model_landmarks: Float[Tensor, "68 3"],
    focal: float, size: tuple[int, int], principal: Optional[tuple[float, float]] = None,
) -> Float[Tensor, "T 3"]:  # fmt: skip
    """Depth from the landmarks' spread against the neutral model's, x and y from their centre."""
    cx, cy = principal if principal is not None else (size[0] / 2, size[1] / 2)
    weight = valid[..., None]
    centre = (landmarks_px * weight).sum(1) / weight.sum(1).clamp_min(1)
    spread = (((landmarks_px - centre[:, None]) ** 2).sum(-1) * valid).sum(1) / valid.sum(1).clamp_min(1)
    m = model_landmarks[:, :2] * WORLD_SCALE
    model_spread = ((m - m.mean(0)) ** 2).sum(-1).mean()
    depth = focal * (model_spread / spread.clamp_min(1e-6)).sqrt()
    x = (centre[:, 0] - cx) * depth / focal
    y = -(centre[:, 1] - cy) * depth / focal
    t = torch.stack([x, y, -depth], dim=-1)
    seen = valid.sum(1) >= 3
    if not bool(seen.any()):
        raise ValueError("no frame has 3 or more landmarks: nothing to fit")
    if not bool(seen.all()):  # frames without landmarks: linear interpolation in time between seen frames
        times = torch.arange(len(t), dtype=t.dtype)
        known = times[seen]
        for c in range(3):
            t[~seen, c] = torch.from_numpy(
                np.interp(times[~seen].numpy(), known.numpy(), t[seen, c].cpu().numpy())
            ).to(t)
    return t


def fit_flame_to_landmarks(
    flame: FlameModel,
    landmarks_px: Float[Tensor, "T 68 2"],
    size: tuple[int, int],
    focal: float,
    iris_px: Optional[Float[Tensor, "T 2 2"]] = None,
    config: LandmarkFitConfig = LandmarkFitConfig(),
    progress: Optional[Callable[[int, int, float], None]] = None,
    dense_px: Optional[Float[Tensor, "T K 2"]] = None,
    dense_embedding: Optional["MediapipeEmbedding"] = None,
    photometric: Optional["PhotometricTarget"] = None,
    principal: Optional[tuple[float, float]] = None,
) -> LandmarkFit:
    """Fit one shape and focal and per-frame expression, pose and translation to 2-D landmarks.

    ``dense_px`` (with ``dense_embedding``): detected mediapipe points, the embedding's ``indices`` in its
    order, fitted to their embedded mesh points (the dense term). NaN landmarks (a frame without a face, a
    point not detected) are left out of the loss; such frames are held by the smoothness term between
    their neighbours. ``photometric`` (with ``config.photometric_steps``): the crops for the photometric
    refinement (:mod:`headstudio.track.photometric`). ``principal``: the camera's principal point in pixels
    (default: the image centre; hs-track passes the source frame's centre, which its face crop moves)."""
    if landmarks_px.dim() != 3 or tuple(landmarks_px.shape[1:]) != (68, 2):
        raise ValueError(f"landmarks must be (frames, 68, 2) iBUG-68 pixels, got {tuple(landmarks_px.shape)}")
    device, dtype = flame.v_template.device, flame.v_template.dtype
    lm = landmarks_px.to(device, dtype)
    t_count = lm.shape[0]
    valid = torch.isfinite(lm).all(-1).to(dtype)  # T 68
    lm = torch.nan_to_num(lm)
    weights = torch.ones(68, device=device, dtype=dtype)
    weights[CONTOUR] = config.contour_weight
    use_iris = iris_px is not None and flame.has_iris and config.iris_weight > 0
    if use_iris:
        iris = iris_px.to(device, dtype)
        iris_valid = torch.isfinite(iris).all(-1).to(dtype)
        iris = torch.nan_to_num(iris)
    scale = 512.0 / max(size)  # errors in pixels of a 512-px image, whatever the resolution
    use_dense = dense_px is not None and dense_embedding is not None and config.dense_weight > 0
    if use_dense:
        if tuple(dense_px.shape) != (t_count, len(dense_embedding), 2):
            raise ValueError(f"dense points must be (frames, {len(dense_embedding)}, 2), got {tuple(dense_px.shape)}")
        dense = dense_px.to(device, dtype)
        dense_valid = torch.isfinite(dense).all(-1).to(dtype) * torch.as_tensor(dense_embedding.weights).to(dense)
        dense = torch.nan_to_num(dense)

    with torch.no_grad():
        neutral = flame()
        t0 = initial_translation(lm, valid, neutral.landmarks[0], focal, size, principal)
    dense_faces = torch.as_tensor(dense_embedding.faces if use_dense else np.zeros(0), dtype=torch.long, device=device)
    dense_bary = torch.as_tensor(dense_embedding.bary if use_dense else np.zeros((0, 3))).to(device, dtype)
    num_dense = len(dense_faces)
    use_bias = use_dense and config.detector_bias and dense_embedding.bias is not None
    if use_bias:
        from headstudio.track.mediapipe_embedding import bias_features, detector_offsets

        bias = torch.as_tensor(dense_embedding.bias).to(device, dtype)
    sparse = LandmarkFlame(flame, *((dense_faces, dense_bary) if use_dense else ()))
    shape = torch.zeros(config.num_shape, device=device, dtype=dtype, requires_grad=True)
    expression = torch.zeros(t_count, flame.num_expression, device=device, dtype=dtype, requires_grad=True)
    pose = torch.zeros(t_count, 15, device=device, dtype=dtype, requires_grad=True)
    translation = t0.clone().requires_grad_(True)
    log_focal = torch.tensor(math.log(focal), device=device, dtype=dtype, requires_grad=True)

    def evaluate(rigid: bool = False):
        landmarks, iris_points, dense_points = sparse(shape, expression, pose, rigid=rigid)
        f = log_focal.exp()
        pred = project(landmarks * WORLD_SCALE + translation[:, None], f, size, principal)
        pred_iris = project(iris_points * WORLD_SCALE + translation[:, None], f, size, principal) if use_iris else None
        pred_dense = None
        if dense_points is not None:
            pred_dense = project(dense_points * WORLD_SCALE + translation[:, None], f, size, principal)
        extra = None  # the photometric stage's vertices, after the embedded points
        if pred_dense is not None and pred_dense.shape[1] > num_dense:
            pred_dense, extra = pred_dense[:, :num_dense], pred_dense[:, num_dense:]
        if use_bias:  # where mediapipe puts the points: the embedded points moved by its calibrated bias
            offset = detector_offsets(bias, bias_features(pose, expression, dense_embedding.bias_num_expression,
                                                            dense_embedding.bias_feature_set))
            pixels = f * WORLD_SCALE / (-translation[:, 2]).clamp_min(1e-6)  # per FLAME unit at the head
            pred_dense = pred_dense + offset * pixels[:, None, None]
        return pred, pred_iris, pred_dense if use_dense else None, extra

    def loss_fn(outputs=None, rigid: bool = False):
        pred, pred_iris, pred_dense, _ = outputs if outputs is not None else evaluate(rigid)
        err = (((pred - lm) * scale) ** 2).sum(-1) * valid * weights
        loss = config.landmark_weight * err.sum() / (valid * weights).sum().clamp_min(1)
        if use_dense:
            derr = (((pred_dense - dense) * scale) ** 2).sum(-1) * dense_valid
            loss = loss + config.dense_weight * derr.sum() / dense_valid.sum().clamp_min(1e-6)
        if use_iris:
            ierr = (((pred_iris - iris) * scale) ** 2).sum(-1) * iris_valid
            loss = loss + config.iris_weight * ierr.sum() / iris_valid.sum().clamp_min(1)
        loss = loss + config.shape_prior * (shape**2).sum() + config.expression_prior * (expression**2).sum(-1).mean()
        joints = torch.cat([pose[:, 3:6], pose[:, 7:9], pose[:, 9:15]], dim=-1)
        loss = loss + config.joint_prior * (joints**2).sum(-1).mean()
        if t_count > 1:
            series = torch.cat([expression, pose, 10.0 * translation], dim=-1)
            loss = loss + config.smoothness * ((series[1:] - series[:-1]) ** 2).sum(-1).mean()
        return loss

    history = []
    stages = [([pose, translation], config.rigid_steps), ([shape, expression, pose, translation], config.full_steps)]
    if config.focal:
        stages[1][0].append(log_focal)
    use_photometric = photometric is not None and config.photometric_steps > 0
    total = sum(n for _, n in stages) + (config.photometric_steps if use_photometric else 0)
    done = 0
    for stage, (params, steps) in enumerate(stages):
        optimizer = Adam(params, lr=config.lr)
        for _ in range(steps):
            optimizer.zero_grad()
            loss = loss_fn(rigid=stage == 0)
            loss.backward()
            if stage == 0:  # rigid: only the global rotation moves
                pose.grad[:, 3:] = 0
            optimizer.step()
            done += 1
            history.append(float(loss.detach()))
            if progress is not None:
                progress(done, total, history[-1])

    if use_photometric:
        from headstudio.track import photometric as P

        def full_mesh() -> Tensor:
            with torch.no_grad():
                verts = flame(shape=torch.cat([shape, shape.new_zeros(flame.num_shape - config.num_shape)])[None],
                              expression=expression, pose=pose).vertices  # fmt: skip
                return verts * WORLD_SCALE + translation[:, None]

        everything = torch.arange(flame.num_vertices, device=device)
        focal_now = float(log_focal.detach().exp())
        seen_all = P.visible_vertices(full_mesh(), flame.faces, focal_now, size[0], photometric, everything, principal)
        candidates = everything[seen_all.float().mean(0) >= 0.3]
        face_of, corner = P.vertex_faces(flame.faces, flame.num_vertices)
        sparse = LandmarkFlame(flame, torch.cat([dense_faces, face_of[candidates]]),
                               torch.cat([dense_bary, corner[candidates].to(dtype)]))  # fmt: skip
        seen = seen_all[:, candidates]
        reference = None
        optimizer = Adam([shape, expression, pose, translation], lr=config.photometric_lr)
        for step in range(config.photometric_steps):
            if step == config.photometric_steps // 2 and step > 0:
                seen = P.visible_vertices(full_mesh(), flame.faces, focal_now, size[0], photometric, candidates, principal)
            optimizer.zero_grad()
            outputs = evaluate()
            samples = P.sample_colours(photometric.images, outputs[3], photometric.crop_size)
            if reference is None or step % config.photometric_refresh == 0:
                reference = P.reference_colours(samples.detach(), seen)
            loss = loss_fn(outputs) + config.photometric_weight * P.photometric_loss(samples, reference, seen)
            loss.backward()
            optimizer.step()
            done += 1
            history.append(float(loss.detach()))
            if progress is not None:
                progress(done, total, history[-1])

    with torch.no_grad():
        pred, pred_iris, pred_dense, _ = evaluate()
        dist = (pred - lm).norm(dim=-1)
        error = (dist * valid).sum(1) / valid.sum(1)
        error[valid.sum(1) == 0] = float("nan")
        dense_error = None
        if use_dense:
            seen = torch.isfinite(dense_px.to(device)).all(-1).to(dtype)
            dense_error = ((pred_dense - dense).norm(dim=-1) * seen).sum(1) / seen.sum(1)
            dense_error[seen.sum(1) == 0] = float("nan")
    full_shape = torch.zeros(flame.num_shape, device=device, dtype=dtype)
    full_shape[: config.num_shape] = shape.detach()
    return LandmarkFit(
        shape=full_shape, expression=expression.detach(), pose=pose.detach(), translation=translation.detach(),
        focal=float(log_focal.detach().exp()), principal=principal if principal is not None else (size[0] / 2, size[1] / 2),
        landmarks_px=pred, iris_px=pred_iris, error_px=error, history=history,
        dense_px=pred_dense, dense_error_px=dense_error,
    )  # fmt: skip
