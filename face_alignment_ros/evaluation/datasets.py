"""Evaluation data readers, all yielding one ``Sample`` type.

- 300-W-style folders: ``NAME.jpg`` / ``NAME.png`` with ``NAME.pts`` (68 points, pixels).
- AFLW2000-3D-style folders: ``NAME.jpg`` with ``NAME.mat`` holding ``pt3d_68`` (3 x 68: x, y
  in pixels, z) and ``Pose_Para`` (1 x 7: pitch, yaw, roll in radians, tx, ty, tz, scale);
  yaw is ``Pose_Para[0, 1]``. As 3DDFA does, the x, y rows of ``pt3d_68`` are used as they are:
  they are fixed model vertices (the 3D convention), so they are also the sample's
  ``landmarks_3d``; the angles give its ``rotation`` (``head_pose.rotation_from_aflw``).
  ``write_aflw2000_sample`` writes the same format (tests, and renders exported for peers).
- The project's synthetic large-pose renders (stage ``synthesize``, held-out identities by
  default): 128 x 128 crops, yaw from the render camera, visibility from the depth buffer; the
  rotation and the 68 fixed landmark vertices projected come from the render's camera and shape.
- The held-out photos profiled (stage ``profile``, 300W-LP style: the whole photo region turned
  with the fitted head to yaw bins up to 90 degrees), read like the renders: a proxy for real
  large-pose photos (AFLW2000-3D), from photos that training never reads.
- The fixed held-out split of the shared 300-W photos (``common.photo_split``).

``open_dataset(spec)`` takes ``300w-heldout``, ``synthetic-heldout``, ``profiled-heldout`` or a folder (format
detected from its files). Readers are lazy: images are read when a sample is built.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from face_alignment_ros.common.pts_io import read_pts

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class Sample:
    image: np.ndarray                 # uint8 BGR (H, W, 3)
    landmarks: np.ndarray             # (68, 2) float32 pixels, iBUG order
    yaw_deg: float | None             # head yaw in degrees when the data gives it
    name: str
    visible: np.ndarray | None = None  # (68,) bool when the data gives it
    meta: dict = field(default_factory=dict)
    # The 68 fixed model landmark vertices projected, (68, 2) pixels (AFLW2000-3D convention:
    # the jaw does not slide to the silhouette), when the data gives them.
    landmarks_3d: np.ndarray | None = None
    # Head rotation, model frame -> camera optical frame, in this project's convention (as
    # ``FaceResult.rotation``), when the data gives it.
    rotation: np.ndarray | None = None


@dataclass
class Dataset:
    """A named, sized, re-iterable collection of samples."""
    name: str                 # as figures name it (split included)
    kind: str                 # "300w", "aflw2000", "synthetic", "profiled"
    size: int
    _iter: object = field(repr=False)

    def __iter__(self) -> Iterator[Sample]:
        return self._iter()

    def __len__(self) -> int:
        return self.size


def _imread(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot read image {path}")
    return image


def _pick(items: list, limit: int | None) -> list:
    """``limit`` items evenly spaced over the list (all when None or 0): keeps every subset."""
    if not limit or limit >= len(items):
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


# --- 300-W ----------------------------------------------------------------------------------
def _image_for(stem_path: Path) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        p = stem_path.with_suffix(suffix)
        if p.exists():
            return p
    return None


def read_300w_folder(folder: str | Path, limit: int | None = None, name: str | None = None) -> Dataset:
    """Every ``*.pts`` with an image beside it, recursively, sorted by path."""
    folder = Path(folder)
    pairs = [(img, pts) for pts in sorted(folder.rglob("*.pts")) if (img := _image_for(pts)) is not None]
    if not pairs:
        raise FileNotFoundError(f"{folder}: no .pts files with a .jpg/.png beside them")
    pairs = _pick(pairs, limit)

    def it():
        for img, pts in pairs:
            yield Sample(_imread(img), read_pts(pts), None, str(pts.relative_to(folder).with_suffix("")),
                         meta={"subset": pts.parent.name})
    return Dataset(name or folder.name, "300w", len(pairs), it)


def heldout_300w(data_dir: str | Path | None = None, limit: int | None = None) -> Dataset:
    """The fixed held-out split of the shared 300-W photos (training never reads it)."""
    from face_alignment_ros.common.photo_split import SPLIT_NAME, list_photos

    photos = _pick(list_photos("heldout", data_dir), limit)

    def it():
        for p in photos:
            yield Sample(_imread(p.image), read_pts(p.pts), None, f"{p.subset}/{p.name}", meta={"subset": p.subset})
    return Dataset(SPLIT_NAME, "300w", len(photos), it)


# --- AFLW2000-3D ----------------------------------------------------------------------------
def read_aflw2000_mat(path: str | Path) -> dict:
    """``landmarks`` (68, 2) pixels, ``yaw_deg`` (that data's convention), ``pose_para`` (7,) and
    ``rotation`` (3, 3, this project's convention) from an AFLW2000-3D ``.mat``."""
    from scipy.io import loadmat

    from face_alignment_ros.evaluation.head_pose import rotation_from_aflw

    mat = loadmat(str(path))
    if "pt3d_68" not in mat or "Pose_Para" not in mat:
        raise ValueError(f"{path}: needs pt3d_68 and Pose_Para")
    pt = np.asarray(mat["pt3d_68"], np.float64)
    if pt.shape[0] not in (2, 3) or pt.shape[1] != 68:
        raise ValueError(f"{path}: pt3d_68 must be 3 x 68, got {pt.shape}")
    pose = np.asarray(mat["Pose_Para"], np.float64).reshape(-1)
    if pose.shape[0] < 3 or not np.all(np.isfinite(pose[:3])):
        raise ValueError(f"{path}: Pose_Para must hold finite pitch, yaw, roll, got {pose.tolist()}")
    return {"landmarks": pt[:2].T.astype(np.float32), "yaw_deg": float(np.degrees(pose[1])), "pose_para": pose,
            "rotation": rotation_from_aflw(*pose[:3])}


def write_aflw2000_sample(folder: str | Path, name: str, image: np.ndarray, points_3d: np.ndarray,
                          pose_para: np.ndarray) -> Path:
    """``NAME.jpg`` and ``NAME.mat`` (``pt3d_68`` 3 x 68, ``Pose_Para`` 1 x 7) in AFLW2000-3D
    layout. ``points_3d``: (68, 3) x, y pixels and z towards the viewer, as that data has it."""
    from scipy.io import savemat

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(folder / f"{name}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95]):
        raise OSError(f"cannot write {folder / name}.jpg")
    pts = np.asarray(points_3d, np.float64)
    pose = np.asarray(pose_para, np.float64).reshape(1, 7)
    savemat(str(folder / f"{name}.mat"), {"pt3d_68": pts.T, "Pose_Para": pose})
    return folder / f"{name}.mat"


def read_aflw2000_folder(folder: str | Path, limit: int | None = None, name: str | None = None) -> Dataset:
    folder = Path(folder)
    pairs = [(img, mat) for mat in sorted(folder.rglob("*.mat")) if (img := _image_for(mat)) is not None]
    if not pairs:
        raise FileNotFoundError(f"{folder}: no .mat files with an image beside them")
    pairs = _pick(pairs, limit)

    def it():
        for img, mat in pairs:
            label = read_aflw2000_mat(mat)
            name = str(mat.relative_to(folder).with_suffix(""))
            yield Sample(_imread(img), label["landmarks"], label["yaw_deg"], name,
                         landmarks_3d=label["landmarks"], rotation=label["rotation"])
    return Dataset(name or folder.name, "aflw2000", len(pairs), it)


# --- synthetic renders ----------------------------------------------------------------------
def synthetic_renders(split: str = "heldout", work_dir: str | Path | None = None,
                      per_bin: int | None = None, stage: str | None = None, aflw: bool = False) -> Dataset:
    """Renders of stage ``synthesize`` (held-out identities by default), or with
    ``stage="profile"`` the profiled photos of stage ``profile`` (same layout); ``per_bin``
    samples evenly spaced within each yaw bin (all identities kept). ``aflw``: labelled as
    AFLW2000-3D is, by the 68 fixed 3D landmarks only (its given box is theirs)."""
    from face_alignment_ros.common.render_format import PROFILE_STAGE, SYNTHESIZE_STAGE, load_outputs
    from face_alignment_ros.core import camera as cam
    from face_alignment_ros.core.morphable_model import MorphableModel

    stage = stage or SYNTHESIZE_STAGE
    data = load_outputs(work_dir, split, stage)
    model = MorphableModel.load()
    bins = np.asarray(data["yaw_bin"])
    rows = []
    for b in range(3):
        r = np.flatnonzero(bins == b)
        rows += list(_pick(list(r), per_bin))
    rows = sorted(int(r) for r in rows)

    def it():
        for i in rows:
            camera = np.asarray(data["camera"][i], np.float32)
            fixed = cam.project(camera, model.vertices(np.asarray(data["shape"][i], np.float32), model.landmarks))
            landmarks = fixed if aflw else np.asarray(data["landmarks"][i], np.float32)
            yield Sample(np.ascontiguousarray(data["images"][i]), landmarks.astype(np.float32),
                         float(np.degrees(camera[cam.YAW])), f"{split}/{i:06d}",
                         visible=None if aflw else np.asarray(data["landmark_visible"][i], bool),
                         meta={"identity": int(data["identity"][i]), "yaw_bin": int(bins[i]), "camera": camera},
                         landmarks_3d=fixed.astype(np.float32),
                         rotation=cam.rotation_matrix(*camera[cam.PITCH:cam.ROLL + 1]))
    prefix = "profiled" if stage == PROFILE_STAGE else "synthetic"
    if aflw:
        return Dataset(f"{prefix}-{split}-aflw", "aflw2000", len(rows), it)
    return Dataset(f"{prefix}-{split}", prefix, len(rows), it)


# --- dispatch -------------------------------------------------------------------------------
def open_dataset(spec: str | Path, limit: int | None = None, data_dir=None, work_dir=None) -> Dataset:
    """``300w-heldout``, ``synthetic-heldout``, ``profiled-heldout`` (``limit`` per yaw bin; with
    ``-aflw`` appended labelled as AFLW2000-3D is, by the fixed 3D landmarks) or a folder."""
    spec = str(spec)
    if spec.startswith(("profiled-", "synthetic-")) and spec.endswith("-aflw"):  # the AFLW2000-3D protocol
        split = spec.split("-", 1)[1][: -len("-aflw")]
        return synthetic_renders(split, work_dir, per_bin=limit, aflw=True,
                                 stage="profile" if spec.startswith("profiled-") else None)
    if spec == "300w-heldout":
        return heldout_300w(data_dir, limit)
    if spec.startswith("profiled-"):
        return synthetic_renders(spec.split("-", 1)[1], work_dir, per_bin=limit, stage="profile")
    if spec.startswith("synthetic-"):
        return synthetic_renders(spec.split("-", 1)[1], work_dir, per_bin=limit)
    folder = Path(spec)
    if not folder.is_dir():
        raise FileNotFoundError(f"{spec}: not a folder, nor one of 300w-heldout, synthetic-heldout, profiled-heldout")
    if next(folder.rglob("*.mat"), None) is not None:
        return read_aflw2000_folder(folder, limit)
    return read_300w_folder(folder, limit)
