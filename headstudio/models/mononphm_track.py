"""mononphm-track: photometric head tracking in MonoNPHM's latent space (Giebenhain et al., CVPR 2024)
as a nerfstudio model.

The whole story:

1. A trained prior (``hs-prior train``; :mod:`headstudio.prior.model`) is loaded and frozen: the
   canonical local ensemble (:mod:`headstudio.fields.nphm`) and the backward deformation
   (:mod:`headstudio.deformers.nphm_backward`). What is optimised (§4, eq. 6): ``z_geo`` and
   ``z_app`` of the sequence, ``z_exp`` per frame, the head rotation and translation per frame
   (offsets to the tracked FLAME head pose, world units = the prior's), and 3-band spherical
   harmonics lighting (9 coefficients per colour channel), the light uniform and the codes at
   their origin (§4.6: zero; here by default the mean of the prior's identity codes, which is
   MonoNPHM's zero for a prior of many identities: ``code_origin``).
2. Rendering (§4.1-4.2): camera rays are taken into the frame's head (posed) space by the inverse
   head pose; 32 coarse samples in the head box place 32 importance samples by NeuS weights
   (:mod:`headstudio.rendering.neus`); at those the backward deformation gives canonical points,
   the ensemble their SDF and albedo. NeuS turns the SDF into weights with an inverse standard
   deviation ``exp(10 v)``, ``v`` raised from 0.3 to 0.8 over each stage; colour is the albedo
   times SH shading (:mod:`headstudio.rendering.sh`) of the world normal ``R_t grad_{x_p} F_geo``.
3. Losses (§4.3-4.5, supp. B.4): L1 colour over foreground pixels with the mouth interior
   down-weighted 25x, silhouette BCE over all pixels, the landmark loss on the anchors that have
   a detector landmark (posed by Broyden root finding of the backward deformation from 5 starts
   around each canonical anchor, :mod:`headstudio.ops.root_finding`, with implicit gradients),
   weighted 100x on eyes, mouth and chin and decayed over each stage; code priors, symmetry of
   the local codes, and total variation of ``z_exp``, rotation and translation over neighbouring
   frames.
4. Schedule (§4.6, :mod:`headstudio.engine.tracking_schedule`): the first frame alone, then each
   following frame with identity, appearance and light frozen (each starting from the previous
   frame's expression and pose), then everything jointly with a random frame per step. The
   datamanager serves the frame; a training callback sets each step's learning rates (Adam;
   sparse Adam for the per-frame tables so other frames stay put) and the NeuS sharpness.
5. Outputs: per-frame meshes of the posed SDF (``export_kind = "sdf"``, ``hs-export mesh``), and
   on Kinect subjects the depth-based geometry metrics of ``ns-eval``.

Where MonoNPHM's paper gives no number, defaults follow the authors' public code (cited as such);
loss weights are stated relative to the colour loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
import torch.nn.functional as F
from jaxtyping import Float
from nerfstudio.cameras.rays import RayBundle
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.base_model import ModelConfig
from nerfstudio.utils import colors
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.viewer.viewer_elements import ViewerText
from torch import Tensor, nn
from torch.nn import Parameter
from torch.profiler import record_function

from headstudio.data.errors import DataError
from headstudio.engine.tracking_schedule import Stage, TrackingSchedule, TrackingScheduleConfig
from headstudio.fields.frame_codes import FrameCodes
from headstudio.fields.nphm_anchors import anchor_landmark_pairs
from headstudio.flame.lbs import axis_angle_to_matrix
from headstudio.metrics.geometry import project
from headstudio.models.head_model import HeadModel, HeadModelConfig
from headstudio.ops.root_finding import broyden, implicit_root
from headstudio.prior.inspect import DEFAULT_BOX
from headstudio.rendering.implicit_surface import ray_box
from headstudio.rendering.neus import inverse_std, neus_weights, upsample
from headstudio.rendering.sh import sh_shading, uniform_light

MOUTH_INTERIOR_CLASS = 11
"""Face-parsing class of the mouth interior (facer's, as MonoNPHM's data; supp. B.4)."""
EMPHASISED_LANDMARKS = (8,) + tuple(range(36, 48)) + tuple(range(48, 68))
"""iBUG-68 chin (8), eyes (36-47) and mouth (48-67): weighted up in the landmark loss (supp. B.4)."""


@dataclass
class MonoNPHMTrackModelConfig(HeadModelConfig):
    """MonoNPHM tracking (Giebenhain et al. 2024, §4 and supp. B.4)."""

    _target: Type = field(default_factory=lambda: MonoNPHMTrackModel)
    prior: Path = Path("prior.ckpt")
    """Checkpoint of a trained prior (``hs-prior train``); its networks stay frozen."""
    # --- rendering
    num_coarse_samples: int = 32
    """Coarse samples per ray, placed uniformly in the head box (§5 "Tracking": 32)."""
    num_importance_samples: int = 32
    """Importance samples per ray (§5: 32); as in the authors' code, only these are rendered."""
    coarse_variance: float = 0.3
    """NeuS variance v of the coarse pass that places the importance samples (authors' code: 0.3, s = e^3)."""
    variance_start: float = 0.3
    """NeuS variance at the start of the first frame; s = exp(10 v) (supp. B.4: raised from 0.3 to 0.8)."""
    variance_later_start: float = 0.5
    """NeuS variance at the start of each later frame and of the joint stage (authors' code: 0.5)."""
    variance_end: float = 0.8
    """Final NeuS variance (supp. B.4: 0.8)."""
    variance_increment: float = 0.15
    """Raise of v at each interval (authors' code: 0.15)."""
    variance_interval_first: int = 25
    """Steps between raises on the first frame (authors' code: 25; times the schedule's step scale)."""
    variance_interval_later: int = 50
    """Steps between raises on later frames and in the joint stage (authors' code: 50; times the step scale)."""
    head_box: Tuple[float, float, float, float, float, float] = DEFAULT_BOX[0] + DEFAULT_BOX[1]
    """Box (head space, world units: lo xyz, hi xyz) that rays are sampled in: the prior's scan box (head and
    neck). The authors' code samples in a sphere of radius 0.7 about the origin."""
    use_sh: bool = True
    """Shade the albedo with SH lighting (§4.2); False: the ablation without it (supp. C.2)."""
    background_color: str = "white"
    """Colour behind the head; matches the dataparser's compositing colour."""
    code_origin: Literal["mean", "zero"] = "mean"
    """Where ``z_geo`` and ``z_app`` start, and what their priors (eq. 12) pull them towards: "mean", the mean of
    the prior's trained identity codes (ours), or "zero" (§4.6). MonoNPHM's prior, trained on 473 identities
    with a zero-mean code regulariser, has its code mean near 0, so both agree there; a prior of a few
    identities (the CPU preset's 6) has a mean far from 0 (norm 0.22 against a spread of 0.18-0.33 about it, as
    ``bench/nphm_prior.py`` prints), and its zero code is no head but a blob."""
    # --- losses
    rgb_loss_mult: float = 1.0
    """L1 colour loss on foreground pixels (§4.3)."""
    mouth_interior_weight: float = 1.0 / 25.0
    """Colour-loss weight of mouth-interior pixels, segmentation class 11 (supp. B.4: down-weighted by 25)."""
    silhouette_loss_mult: float = 0.25
    """Silhouette BCE over all pixels (§4.3); 25 against colour 100 in the authors' code."""
    use_landmarks: bool = True
    """Landmark loss on posed anchors (§4.4); False: the ablation without it (Table 2)."""
    landmark_loss_mult: float = 1.0
    """Weight of the landmark loss (squared error in image-size units) at the start of a stage (ours: the
    authors' code weighs it like the colour loss)."""
    landmark_emphasis: float = 100.0
    """Factor on the chin, eye and mouth landmarks (supp. B.4: 100); as in the authors' code it scales their
    residual, so their squared error weighs 100^2 times the others'."""
    landmark_decay: Tuple[Tuple[int, float], ...] = ((25, 1.0), (50, 0.5), (100, 0.2))
    """(steps into a frame's stage, factor) of the landmark weight, 0.1 after the last (supp. B.4: strongly
    decayed; the steps and factors are the authors' code's, times the step scale)."""
    landmark_joint_factor: float = 0.05
    """Landmark weight factor in the joint stage (the authors' code: 5 against 100 at the start)."""
    root_starts: int = 5
    """Random starts of the root finding per anchor (supp. B.4: 5; the first start is the anchor itself)."""
    root_start_std: float = 0.002
    """Std of the starts around the canonical anchor, world units (the authors' code: 0.002)."""
    root_max_steps: int = 30
    """Broyden updates (the authors' code: 30)."""
    root_tolerance: float = 5e-5
    """Convergence threshold of the anchor residual, world units (the authors' code: 5e-5)."""
    prior_local_mult: float = 10.0
    """||local parts of z_geo and z_app||^2 (eq. 12; the authors' code: 1000 against colour 100)."""
    prior_global_geo_mult: float = 0.25
    """||global part of z_geo||^2 (eq. 12; the authors' code: 25)."""
    prior_global_app_mult: float = 0.5
    """||global part of z_app||^2 (eq. 12, lambda_app; the authors' code: 50)."""
    prior_expression_mult: float = 1.5
    """||z_exp||^2 of the step's frame (eq. 12, lambda_exp; the authors' code: 150)."""
    symmetry_mult: float = 0.01
    """NPHM's symmetry loss on the local codes of z_geo and z_app (§4.5; the authors' code: 1)."""
    tv_expression_mult: float = 20.0
    """Squared difference of z_exp to the neighbouring frames (eq. 13; the authors' code: 2000). The three TV weights
    are for consecutive video frames; for frames sampled far apart scale them down (bench: by (fps / 25)^2)."""
    tv_rotation_mult: float = 500.0
    """Of the rotation offsets, radians (eq. 13, lambda_rot; the authors' code: 50000)."""
    tv_translation_mult: float = 5000.0
    """Of the translation offsets, world units (eq. 13, lambda_trans; the authors' code: 10 x 50000)."""
    # --- learning rates (each group's optimizer rate is its first-frame rate)
    sequential_lr_factor: Dict[str, float] = field(
        default_factory=lambda: {"expression": 0.99, "rotation": 0.099, "translation": 0.099}
    )
    """Rates of later frames against the first frame's (authors' code: 0.99, pose a tenth of that);
    the groups not named are frozen (§4.6: identity, appearance and lighting)."""
    joint_lr_factor: Dict[str, float] = field(
        default_factory=lambda: {"codes": 0.4, "expression": 0.5, "lighting": 0.002, "rotation": 0.06, "translation": 0.04}
    )
    """Rates of the joint stage against the first frame's (authors' code: 2e-4, 1e-4, 1e-4, 3e-4, 1e-4)."""
    first_frame_halvings: Dict[str, Tuple[float, ...]] = field(
        default_factory=lambda: {
            "codes": (0.8, 0.9), "expression": (0.8, 0.9), "lighting": (0.6, 0.9), "rotation": (0.128,), "translation": (0.128,)
        }
    )  # fmt: skip
    """Fractions of the first frame's steps where a group's rate halves (supp. B.4: pose and lighting decay
    earlier than the codes; the authors' code: pose at 32 of 250, lighting at 150 and 225, codes at 200 and 225)."""
    joint_halvings: Tuple[float, ...] = (0.5, 0.75)
    """Fractions of the joint stage where every rate halves (authors' code)."""


class MonoNPHMTrackModel(HeadModel):
    """Model of mononphm-track; see the module docstring."""

    config: MonoNPHMTrackModelConfig
    export_kind = "sdf"

    def populate_modules(self) -> None:
        super().populate_modules()
        from headstudio.prior.training import load_checkpoint

        cfg = self.config
        path = Path(cfg.prior)
        if not path.is_file():
            raise DataError(
                f"--pipeline.model.prior {path}: no such file; train a prior first: `hs-synth scans scans/ && "
                f"hs-prior train scans/ --output {path}` (README, MonoNPHM prior)"
            )
        prior, _ = load_checkpoint(path)
        for p in prior.parameters():
            p.requires_grad_(False)
        prior.eval()
        self.prior = prior
        meta = self.kwargs["metadata"]
        schedule = meta.get("tracking_schedule")
        tracked = meta.get("tracked_frames")
        if schedule is None or tracked is None:
            tracked = list(self.subject.train_frames)
            schedule = TrackingSchedule(TrackingScheduleConfig(), len(tracked))
        self.schedule: TrackingSchedule = schedule
        CONSOLE.print(f"mononphm-track schedule: {schedule.describe()}")
        self.tracked_frames: List[int] = [int(f) for f in tracked]
        self.image_frames: List[int] = [int(f) for f in meta.get("image_frames", self.subject.train_frames)]
        """Frame index of each training image (the ray batch's camera index)."""
        self.position_of = {f: k for k, f in enumerate(self.tracked_frames)}
        table = meta["frame_table"]
        for key in ("camera_to_world", "intrinsics", "landmarks", "image_size"):
            self.register_buffer(f"frame_{key}", torch.as_tensor(table[key], dtype=torch.float32), persistent=False)
        n, dim = self.subject.num_frames, prior.field.code_dim
        # z_geo and z_app are offsets to the code origin (config.code_origin); the priors act on the offsets.
        for name, table in (("geo_origin", prior.z_geo.weight), ("app_origin", prior.z_app.weight)):
            mean = table.detach().mean(0, keepdim=True)
            self.register_buffer(name, mean if cfg.code_origin == "mean" else torch.zeros_like(mean), persistent=False)
        self.z_geo = Parameter(torch.zeros(1, dim))
        self.z_app = Parameter(torch.zeros(1, dim))
        self.z_exp = FrameCodes(n, prior.sizes.deformation.expression_code, self.tracked_frames, init_std=0.0, sparse=True)
        self.rotation = FrameCodes(n, 3, self.tracked_frames, init_std=0.0, sparse=True)
        self.translation = FrameCodes(n, 3, self.tracked_frames, init_std=0.0, sparse=True)
        self.sh = Parameter(uniform_light(3))
        root = self.subject.track.transforms[:, 0]  # tracked FLAME head pose (root joint), world units
        self.register_buffer("base_rotation", root[:, :3, :3].clone(), persistent=False)
        self.register_buffer("base_translation", root[:, :3, 3].clone(), persistent=False)
        self.register_buffer("trained_steps", torch.zeros((), dtype=torch.long))
        box = torch.tensor(cfg.head_box, dtype=torch.float32)
        self.register_buffer("box_lo", box[:3], persistent=False)
        self.register_buffer("box_hi", box[3:], persistent=False)
        anchors, landmarks = anchor_landmark_pairs()
        self.register_buffer("lm_anchors", torch.tensor(anchors), persistent=False)
        self.register_buffer("lm_ids", torch.tensor(landmarks), persistent=False)
        emph = torch.tensor([cfg.landmark_emphasis**2 if m in EMPHASISED_LANDMARKS else 1.0 for m in landmarks])
        self.register_buffer("lm_weights", emph, persistent=False)
        self.background = colors.get_color(cfg.background_color)
        self.viewer_progress = ViewerText("Tracking", "not started", disabled=True, hint="Stage of the tracking schedule")

    # ------------------------------------------------------------------ parameters and schedule
    def get_param_groups(self) -> Dict[str, List[Parameter]]:
        return {
            "codes": [self.z_geo, self.z_app],
            "expression": [self.z_exp.codes],
            "lighting": [self.sh],
            "rotation": [self.rotation.codes],
            "translation": [self.translation.codes],
        }

    def stage(self) -> Stage:
        return self.schedule.stage(int(self.trained_steps))

    def lr_factor(self, group: str, stage: Stage) -> float:
        """Rate of ``group`` at this step against its first-frame rate (0: frozen)."""
        cfg = self.config
        if stage.name == "first":
            halvings = cfg.first_frame_halvings.get(group, ())
            return 0.5 ** sum(stage.progress >= h for h in halvings)
        if stage.name == "sequential":
            return cfg.sequential_lr_factor.get(group, 0.0)
        return cfg.joint_lr_factor.get(group, 1.0) * 0.5 ** sum(stage.progress >= h for h in cfg.joint_halvings)

    def variance(self, stage: Optional[Stage] = None) -> float:
        """NeuS variance v of the step (s = exp(10 v)): raised by steps from its start to its end."""
        cfg, stage = self.config, stage or self.stage()
        first = stage.name == "first"
        start = cfg.variance_start if first else cfg.variance_later_start
        interval = self.schedule.scaled(cfg.variance_interval_first if first else cfg.variance_interval_later)
        return min(start + cfg.variance_increment * (stage.step // interval), cfg.variance_end)

    def landmark_factor(self, stage: Stage) -> float:
        cfg = self.config
        if stage.name == "joint":
            return cfg.landmark_joint_factor
        for steps, factor in cfg.landmark_decay:
            if stage.step < self.schedule.scaled(steps):
                return factor
        return 0.1

    def frozen_identity(self) -> bool:
        """The sequential stage keeps identity, appearance and lighting fixed."""
        return self.training and self.stage().name == "sequential"

    @torch.no_grad()
    def begin_step(self, step: int, optimizers=None) -> None:
        """Before each training step: record the step, start a new frame from the previous one, set the rates."""
        self.trained_steps.fill_(step)
        stage = self.stage()
        if stage.name == "sequential" and stage.step == 0:
            prev, cur = self.tracked_frames[stage.position - 1], self.tracked_frames[stage.position]
            for table in (self.z_exp, self.rotation, self.translation):
                table.codes[cur] = table.codes[prev]
        if optimizers is not None:
            for name, optimizer in optimizers.optimizers.items():
                base = optimizers.config[name]["optimizer"].lr
                for group in optimizer.param_groups:
                    group["lr"] = base * self.lr_factor(name, stage)
        if stage.name == "joint":
            text = f"joint: step {stage.step + 1} of {stage.length} (random frames)"
        else:
            text = f"{stage.name}: frame {stage.position + 1} of {len(self.tracked_frames)}, step {stage.step + 1} of {stage.length}"
        self.viewer_progress.value = text

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        optimizers = training_callback_attributes.optimizers
        return [
            TrainingCallback(
                where_to_run=[TrainingCallbackLocation.BEFORE_TRAIN_ITERATION],
                update_every_num_iters=1,
                func=lambda step: self.begin_step(step, optimizers),
            )
        ]

    # ------------------------------------------------------------------ the frame's state
    def codes(self, frame: int) -> Dict[str, Tensor]:
        idx = torch.tensor([frame], device=self.z_geo.device)
        geo, app = self.z_geo, self.z_app
        if self.frozen_identity():
            geo, app = geo.detach(), app.detach()
        return {"geo": self.geo_origin + geo, "app": self.app_origin + app, "exp": self.z_exp(idx)}

    def head_pose(self, frame: int) -> Tuple[Float[Tensor, "3 3"], Float[Tensor, "3"]]:
        """Head-to-world rotation and translation of a frame: the tracked FLAME pose and the learnt offsets."""
        idx = torch.tensor([frame], device=self.z_geo.device)
        rot = self.base_rotation[frame] @ axis_angle_to_matrix(self.rotation(idx))[0]
        return rot, self.base_translation[frame] + self.translation(idx)[0]

    @torch.no_grad()
    def refresh_track_row(self, row: int, nearest: int) -> None:
        """A driven state: the nearest tracked frame's head pose, moved by the change of the FLAME neck joint
        from that frame to the driven state (its codes, and so its learnt pose offsets, follow that frame)."""
        t = self.subject.track.transforms
        base = t[nearest, 0].clone()
        base[:3, :3] = self.base_rotation[nearest]
        base[:3, 3] = self.base_translation[nearest]
        moved = t[row, 1] @ torch.linalg.inv(t[nearest, 1]) @ base
        self.base_rotation[row] = moved[:3, :3]
        self.base_translation[row] = moved[:3, 3]

    def lighting(self) -> Tensor:
        return self.sh.detach() if self.frozen_identity() else self.sh

    def frame_sdf(self, points: Float[Tensor, "N 3"], frame: int) -> Float[Tensor, "N"]:
        """Posed SDF (negative inside) at world points in ``frame`` (mesh export)."""
        rot, trans = self.head_pose(frame)
        x_p = (points - trans) @ rot
        return self.prior.posed(x_p[None], self.codes(frame), colour=False)["sdf"][0]

    # ------------------------------------------------------------------ rendering
    def get_outputs(self, ray_bundle: RayBundle) -> Dict[str, Tensor]:
        frames = self.subject.frame_of(ray_bundle)
        origins = ray_bundle.origins.reshape(-1, 3)
        directions = F.normalize(ray_bundle.directions.reshape(-1, 3), dim=-1)
        n = origins.shape[0]
        device = origins.device
        out = {
            "rgb": self.background.to(device).expand(n, 3).clone(),
            "accumulation": torch.zeros(n, 1, device=device),
            "depth": torch.zeros(n, 1, device=device),
            "normal": torch.zeros(n, 3, device=device),
        }
        for frame in torch.unique(frames).tolist():
            rows = torch.nonzero(frames == frame).reshape(-1)
            part = self.render_frame(origins[rows], directions[rows], int(frame))
            for key, value in part.items():
                out[key] = out[key].index_put((rows,), value)
        return out

    def render_frame(self, origins: Tensor, directions: Tensor, frame: int) -> Dict[str, Tensor]:
        """Render rays of one frame (NeuS in posed space, §4.1)."""
        cfg = self.config
        keep_graph = torch.is_grad_enabled()  # training and test-time fitting backpropagate through the normals
        rot, trans = self.head_pose(frame)
        o_p, d_p = (origins - trans) @ rot, directions @ rot  # world -> head space: R^T (x - t)
        codes = self.codes(frame)
        near, far = ray_box(o_p.detach(), d_p.detach(), self.box_lo.expand_as(o_p), self.box_hi.expand_as(o_p))
        hit = far > near
        n = origins.shape[0]
        bg = self.background.to(origins)
        rgb, acc = bg.expand(n, 3).clone(), torch.zeros(n, 1, device=origins.device)
        depth, normal = torch.zeros(n, 1, device=origins.device), torch.zeros(n, 3, device=origins.device)
        rows = torch.nonzero(hit).reshape(-1)
        if rows.numel() == 0:
            return {"rgb": rgb, "accumulation": acc, "depth": depth, "normal": normal}
        o, d, t0, t1 = o_p[rows], d_p[rows], near[rows, None], far[rows, None]
        s = cfg.num_coarse_samples
        u = (torch.arange(s, device=o.device) + 0.5) / s
        if self.training:
            u = u + (torch.rand(rows.numel(), s, device=o.device) - 0.5) / s
        t_coarse = t0 + (t1 - t0) * u
        with torch.no_grad(), record_function("mononphm/coarse_pass"):
            pts = (o.detach()[:, None] + t_coarse[..., None] * d.detach()[:, None]).reshape(1, -1, 3)
            sdf_c = self.prior.posed(pts, {k: v.detach() for k, v in codes.items()}, colour=False)["sdf"].view(-1, s)
            t_fine = upsample(t_coarse, sdf_c, cfg.num_importance_samples, inverse_std(cfg.coarse_variance))
            edges, _ = torch.sort(torch.cat([t_fine, t0, t1], -1), -1)
        # Render at the midpoints of consecutive importance samples (and the box ends): contiguous intervals, so
        # NeuS's interval opacity cannot miss a crossing between two samples.
        t_fine = 0.5 * (edges[:, 1:] + edges[:, :-1])
        deltas = edges[:, 1:] - edges[:, :-1]
        with torch.enable_grad(), record_function("mononphm/fine_samples"):
            x = (o[:, None] + t_fine[..., None] * d[:, None]).reshape(1, -1, 3)
            if not x.requires_grad:
                x.requires_grad_(True)
            field = self.prior.posed(x, codes)
            sdf = field["sdf"]
        with torch.enable_grad(), record_function("mononphm/sdf_gradient"):
            (grad,) = torch.autograd.grad(sdf.sum(), x, create_graph=keep_graph)
        m = t_fine.shape[1]
        sdf, grad, albedo = sdf.view(-1, m), grad.view(-1, m, 3), field["rgb"].view(-1, m, 3)
        slope = (grad * d[:, None]).sum(-1)
        weights = neus_weights(sdf, slope, deltas, inverse_std(self.variance()))
        n_world = F.normalize(grad, dim=-1) @ rot.T
        colour = albedo
        if cfg.use_sh:
            colour = albedo * sh_shading(n_world.reshape(-1, 3), self.lighting()).view(-1, m, 3)
        w = weights[..., None]
        a = w.sum(1)
        rgb = rgb.index_put((rows,), (w * colour).sum(1) + (1.0 - a) * bg)
        acc = acc.index_put((rows,), a)
        depth = depth.index_put((rows,), (w[..., 0] * t_fine).sum(1, keepdim=True) / a.clamp_min(1e-6))
        normal = normal.index_put((rows,), (w * n_world).sum(1))
        if not keep_graph:
            rgb, acc, depth, normal = rgb.detach(), acc.detach(), depth.detach(), normal.detach()
        return {"rgb": rgb, "accumulation": acc, "depth": depth, "normal": normal}

    # ------------------------------------------------------------------ landmarks
    def posed_anchors(self, frame: int) -> Tuple[Float[Tensor, "K 3"], Tensor]:
        """Anchors with a detector landmark, in the frame's head space: the roots of
        ``D_exp(a_p)[:3] = a_c`` (eq. 10), with implicit gradients; and which converged."""
        cfg = self.config
        codes = self.codes(frame)
        g_geo, _ = self.prior.field.split_code(codes["geo"])
        a_c = self.prior.field.anchors(g_geo)[0][self.lm_anchors]  # (K, 3)
        k = a_c.shape[0]
        exp_d, geo_d = codes["exp"].detach(), codes["geo"].detach()
        target = a_c.detach().repeat(cfg.root_starts, 1)
        gen = torch.Generator(device="cpu").manual_seed(int(self.trained_steps))
        noise = torch.randn(target.shape, generator=gen).to(target) * cfg.root_start_std
        noise[:k] = 0.0  # the first start is the anchor itself

        def residual(x: Tensor, ids: Tensor) -> Tensor:
            x_c, _ = self.prior.deformation(x[None], exp_d, geo_d)
            return x_c[0] - target[ids]

        eye = torch.eye(3, device=target.device).expand(target.shape[0], 3, 3)
        res = broyden(residual, target + noise, eye, max_steps=cfg.root_max_steps, tol=cfg.root_tolerance)
        best = res.residual.view(cfg.root_starts, k).argmin(0)
        pick = best * k + torch.arange(k, device=best.device)
        root = res.root[pick].detach().requires_grad_(True)
        converged = res.converged[pick]
        with torch.enable_grad():
            x_c, _ = self.prior.deformation(root[None], codes["exp"], codes["geo"])
            x_c = x_c[0]
            rows = [torch.autograd.grad(x_c[:, i].sum(), root, retain_graph=True)[0] for i in range(3)]
        jac = torch.stack(rows, 1).detach()  # d x_c / d x_p, (K, 3, 3)
        return implicit_root(root, x_c - a_c, jac), converged

    def landmark_loss(self, frame: int) -> Tensor:
        """Mean squared distance, in image-size units, between projected posed anchors and detected landmarks
        (the emphasised ones weighted up, as the authors' code, not renormalised)."""
        lms = self.frame_landmarks[frame][self.lm_ids]
        valid = torch.isfinite(lms).all(-1)
        posed, converged = self.posed_anchors(frame)
        valid = valid & converged
        if not bool(valid.any()):
            return torch.zeros((), device=lms.device)
        rot, trans = self.head_pose(frame)
        world = posed @ rot.T + trans
        fx, fy, cx, cy = self.frame_intrinsics[frame]
        px = project(world, self.frame_camera_to_world[frame], fx, fy, cx, cy)
        size = self.frame_image_size[frame]
        err = ((px - torch.nan_to_num(lms)) / size).square().sum(-1)
        return (self.lm_weights * valid * err).sum() / valid.sum()

    # ------------------------------------------------------------------ losses
    def regularisers(self, frame: int) -> Dict[str, Tensor]:
        cfg, field = self.config, self.prior.field
        out: Dict[str, Tensor] = {}
        if not self.frozen_identity():
            g_geo, l_geo = field.split_code(self.z_geo)
            g_app, l_app = field.split_code(self.z_app)
            out["code_prior"] = (
                cfg.prior_local_mult * (l_geo.square().sum() + l_app.square().sum())
                + cfg.prior_global_geo_mult * g_geo.square().sum()
                + cfg.prior_global_app_mult * g_app.square().sum()
            )
            out["symmetry"] = cfg.symmetry_mult * (
                field.symmetry_loss(self.geo_origin + self.z_geo) + field.symmetry_loss(self.app_origin + self.z_app)
            )
        idx = torch.tensor([frame], device=self.z_geo.device)
        out["expression_prior"] = cfg.prior_expression_mult * self.z_exp(idx).square().sum()
        k = self.position_of.get(frame)
        if k is None:
            return out
        sequential = self.stage().name == "sequential"  # earlier frames are done: only the current one moves
        neighbours = [k - 1] if sequential else [k - 1, k + 1]
        tv = torch.zeros((), device=idx.device)
        for j in neighbours:
            if not 0 <= j < len(self.tracked_frames):
                continue
            other = torch.tensor([self.tracked_frames[j]], device=idx.device)
            for table, mult in ((self.z_exp, cfg.tv_expression_mult), (self.rotation, cfg.tv_rotation_mult),
                                (self.translation, cfg.tv_translation_mult)):  # fmt: skip
                ref = table(other)
                tv = tv + mult * (table(idx) - (ref.detach() if sequential else ref)).square().sum()
        out["smoothness"] = tv
        return out

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        cfg = self.config
        device = outputs["rgb"].device
        image = batch["image"][..., :3].to(device)
        frame = self.image_frames[int(batch["indices"][0, 0])]  # one frame per step (the tracking datamanager)
        mask = batch["mask"].to(device).float().reshape(-1) if "mask" in batch else torch.ones(image.shape[0], device=device)
        weight = torch.ones_like(mask)
        if "segmentation" in batch:
            mouth = batch["segmentation"].to(device).reshape(-1) == MOUTH_INTERIOR_CLASS
            weight = torch.where(mouth, torch.full_like(weight, cfg.mouth_interior_weight), weight)
        fg = mask * weight
        l1 = (outputs["rgb"] - image).abs().mean(-1)
        losses = {"rgb_loss": cfg.rgb_loss_mult * (fg * l1).sum() / mask.sum().clamp_min(1.0)}
        acc = outputs["accumulation"].reshape(-1).clamp(1e-4, 1.0 - 1e-4)
        losses["silhouette_loss"] = cfg.silhouette_loss_mult * F.binary_cross_entropy(acc, mask)
        if cfg.use_landmarks and self.training:
            with record_function("mononphm/landmark_loss"):
                lm = self.landmark_loss(frame)
            losses["landmark_loss"] = cfg.landmark_loss_mult * self.landmark_factor(self.stage()) * lm
        losses.update(self.regularisers(frame))
        return losses

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        with torch.no_grad():
            metrics = super().get_metrics_dict({k: v.detach() for k, v in outputs.items()}, batch)
        metrics["neus_inverse_std"] = torch.tensor(inverse_std(self.variance()))
        return metrics
