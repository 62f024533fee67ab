"""One frame in, all output messages out: the code shared by ``face_alignment_node`` and
``face-align-bag``. ROS messages in and out, the core in between; no maths here.

Not thread-safe by design: one thread calls ``set_descent_model`` and ``process``, so a model
swap can only happen between two frames.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sensor_msgs.msg import Image

from face_alignment_ros.core import resources
from face_alignment_ros.core import threads as thread_policy
from face_alignment_ros.core.aligner import FaceAligner
from face_alignment_ros.core.descent_model import DescentModel
from face_alignment_ros.core.descriptors import create_backend
from face_alignment_ros.core.face_detector import create_detector
from face_alignment_ros.core.head_frame import Intrinsics, metric_landmarks_mm, metric_pose
from face_alignment_ros.core.morphable_model import MorphableModel
from face_alignment_ros.core.overlay import draw_faces
from face_alignment_ros.core.smoothing import OneEuroSettings
from face_alignment_ros.core.tracker import FaceTracker
from face_alignment_ros.msg import FaceMeshArray, LandmarksArray, MeshTopology
from face_alignment_ros.ros import messages
from face_alignment_ros.ros.face_ids import FaceIds, hri_id
from face_alignment_ros.ros.image_conversion import bgr_to_image_fields, message_to_bgr


@dataclass
class PipelineConfig:
    """What the pipeline reads of the node's parameters, under the parameters' own names."""
    redetect_every: int = 10
    min_confidence: float = 0.3
    max_faces: int = 8
    focal_length_px: float = 0.0          # 0: from horizontal_fov_deg (without CameraInfo)
    horizontal_fov_deg: float = 60.0
    face_frame_prefix: str = "face_"
    gaze_frame_prefix: str = "gaze_"
    publish_gaze: bool = False
    publish_debug_image: bool = False
    publish_markers: bool = False
    smoothing: bool = False               # One Euro filter of landmarks and pose (core.smoothing)
    smoothing_min_cutoff: float = 1.0
    smoothing_beta: float = 10.0
    flip_average: bool = False            # FaceAligner.flip_average: mirrored crop too, averaged
    second_pass: bool = False             # FaceAligner.second_pass: detected faces aligned again

    def smoothing_settings(self) -> OneEuroSettings | None:
        return OneEuroSettings(self.smoothing_min_cutoff, self.smoothing_beta) if self.smoothing else None

    @classmethod
    def from_values(cls, values: dict) -> PipelineConfig:
        return cls(**{k: values[k] for k in cls.__dataclass_fields__ if k in values})


@dataclass
class FrameOutput:
    header: object
    landmarks: LandmarksArray
    meshes: FaceMeshArray
    transforms: list
    topology: MeshTopology | None = None    # set when the topology (re)appears
    debug_image: Image | None = None
    markers: object | None = None
    faces: list = field(default_factory=list)  # core TrackedFace
    intrinsics: Intrinsics | None = None
    image: np.ndarray | None = None  # the input as BGR (or gray), for the ROS4HRI face images
    stages_ms: dict = field(default_factory=dict)


def default_dff_weights() -> Path:
    return resources.shipped_models("dff").dff_weights


class FramePipeline:
    def __init__(self, config: PipelineConfig | None = None, dff_weights: str | Path | None = None,
                 detector: str = "default", device: str | None = None, model: MorphableModel | None = None,
                 threads: int | None = None):
        """``threads``: the core's thread policy (``core.threads``; None or 0: its default),
        applied to this process here."""
        self.threads = thread_policy.apply(threads or None)
        self.config = config or PipelineConfig()
        self.dff_weights = Path(dff_weights) if dff_weights else default_dff_weights()
        self.device = None if device in (None, "", "auto") else device
        self._detector_name = detector
        self._detector = None
        self._model = model
        self.aligner: FaceAligner | None = None
        self.tracker: FaceTracker | None = None
        self.topology: MeshTopology | None = None
        self._topology_sent = False
        self.descent_sha256 = ""
        self.face_ids = FaceIds()
        self._checked_k: tuple | None = None  # (K, width, height) last checked, and its result
        self._checked_intrinsics: Intrinsics | None = None

    @property
    def ready(self) -> bool:
        return self.aligner is not None

    def set_descent_model(self, descent: DescentModel, sha256: str = "") -> None:
        """Use ``descent`` from the next frame on. Reuses the descriptor back-end when it fits;
        builds a new one (and restarts tracking) when the descriptor kind changes."""
        if self._model is None:
            self._model = MorphableModel.load()
        if self._detector is None:
            self._detector = create_detector(self._detector_name, threads=self.threads.detector)
        a = self.aligner
        if a is not None and (a.backend.kind, a.backend.dim, a.backend.crop_size) == \
                (descent.descriptor, descent.descriptor_dim, descent.crop_size):
            a.set_descent_model(descent)
        else:
            backend = create_backend(descent, dff_weights=self.dff_weights, device=self.device,
                                     threads=self.threads.network)
            self.aligner = FaceAligner(descent, backend, model=self._model, detector=self._detector,
                                       flip_average=self.config.flip_average, second_pass=self.config.second_pass)
            self.tracker = None
        if self.tracker is None:
            self.tracker = FaceTracker(self.aligner, self.config.redetect_every, self.config.min_confidence,
                                       max_faces=self.config.max_faces, smoothing=self.config.smoothing_settings())
        self.descent_sha256 = sha256
        tris = self.aligner.model.decimated_triangles
        topo = messages.mesh_topology(tris, len(self.aligner.model.decimated))
        if self.topology is None or topo.topology_id != self.topology.topology_id:
            self.topology, self._topology_sent = topo, False

    def update_config(self, values: dict) -> None:
        for k, v in values.items():
            if k in PipelineConfig.__dataclass_fields__:
                setattr(self.config, k, v)
        if self.aligner is not None:
            self.aligner.flip_average = self.config.flip_average
            self.aligner.second_pass = self.config.second_pass
        if self.tracker is not None:
            self.tracker.redetect_every = self.config.redetect_every
            self.tracker.min_confidence = self.config.min_confidence
            self.tracker.max_faces = self.config.max_faces
            self.tracker.smoothing = self.config.smoothing_settings()

    def take_topology(self) -> MeshTopology | None:
        """The mesh topology once after it (re)appears, else None (it is published latched)."""
        if self.topology is None or self._topology_sent:
            return None
        self._topology_sent = True
        return self.topology

    def camera_intrinsics(self, width: int, height: int, camera_info=None) -> Intrinsics | None:
        """The K of ``camera_info`` when it is plausible for a ``width`` x ``height`` image, else
        None. Checked once per K and image size: a camera sends the same CameraInfo with every
        frame."""
        if camera_info is None:
            return None
        key = (tuple(camera_info.k), width, height)
        if key != self._checked_k:
            intr = Intrinsics.from_k(camera_info.k)
            self._checked_k, self._checked_intrinsics = key, intr if intr.is_valid(width, height) else None
        return self._checked_intrinsics

    def intrinsics(self, width: int, height: int, camera_info=None) -> Intrinsics:
        intr = self.camera_intrinsics(width, height, camera_info)
        if intr is not None:
            return intr
        return Intrinsics.assumed(width, height, self.config.focal_length_px, self.config.horizontal_fov_deg)

    def process(self, image_msg, camera_info=None, header=None) -> FrameOutput:
        """Align every face of ``image_msg`` (an Image or a CompressedImage). Raises
        ``ImageConversionError`` for a bad frame. ``header``: the output header (default: the
        image's own)."""
        if not self.ready:
            raise RuntimeError("no descent model yet")
        header = image_msg.header if header is None else header
        stages = {}
        t0 = time.perf_counter()
        image = message_to_bgr(image_msg)
        t1 = time.perf_counter()
        stamp = image_msg.header.stamp.sec + image_msg.header.stamp.nanosec * 1e-9
        tracked = self.tracker.process(image, stamp_s=stamp or None)  # unstamped: nominal frame rate
        t2 = time.perf_counter()
        cfg = self.config
        intr = self.intrinsics(image.shape[1], image.shape[0], camera_info)
        out = FrameOutput(header=header, landmarks=LandmarksArray(header=header), meshes=FaceMeshArray(header=header),
                          transforms=[], faces=tracked, intrinsics=intr, image=image)
        marker_faces = []
        topo_id = self.topology.topology_id
        face_ids = self.face_ids.assign(self.tracker, [t.face_id for t in tracked])
        for t, face_id in zip(tracked, face_ids):
            face = t.face
            metric = metric_pose(face, intr)
            lms_m = metric.points_m(metric_landmarks_mm(face))
            verts_m = metric.points_m(face.vertices_mm())
            out.landmarks.faces.append(messages.landmarks(header, face_id, face, lms_m))
            mesh = messages.face_mesh(header, face_id, face, verts_m, topo_id, metric)
            out.meshes.faces.append(mesh)
            head_frame = f"{cfg.face_frame_prefix}{hri_id(face_id)}"
            out.transforms.append(messages.transform(header, head_frame, mesh.head_pose))
            if cfg.publish_gaze:
                out.transforms.append(messages.gaze_transform(header.stamp, head_frame,
                                                              f"{cfg.gaze_frame_prefix}{hri_id(face_id)}"))
            if cfg.publish_markers:
                marker_faces.append((face_id, verts_m, face.triangles, lms_m))
        t3 = time.perf_counter()
        out.topology = self.take_topology()
        if cfg.publish_debug_image:
            out.debug_image = Image(header=header, **bgr_to_image_fields(draw_faces(image, [t.face for t in tracked])))
        if cfg.publish_markers:
            out.markers = messages.markers(header, marker_faces)
        t4 = time.perf_counter()
        stages.update({"convert": (t1 - t0) * 1e3, "detect+track+align": (t2 - t1) * 1e3,
                       "messages": (t3 - t2) * 1e3, "debug": (t4 - t3) * 1e3})
        out.stages_ms = stages
        return out
