"""Real-photo samples for the DFF (part of stage ``synthesize``): every fitted photo itself,
cropped as a detector's box would crop it, labelled per pixel with the vertex ids of its fitted
mesh.

The renders teach the DFF large poses but show faces only through a resampled texture, with no
hair, hands, glasses or real lighting over them. These crops show all that. Their labels are as
good as the renders' texture: both come from the same fit. Only pixels inside the annotated face
region (``face_region_mask``: jaw line and a forehead above the brows) are labelled, so hair or a
hand over the fitted forehead never teaches a wrong patch.

Outputs, in the layout of ``common.render_format.output_specs``: ``synthesize/photo_train_*.npy`` (training
photos, ``views`` jittered crops each) and ``synthesize/photo_heldout_*.npy`` (one crop per
held-out photo: a monitor of patch accuracy on real faces, never trained on).
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from face_alignment_ros.common.render_format import BACKGROUND_ID, PHOTO_SPLITS, PHOTO_VIEWS_FILE, open_outputs, yaw_bin
from face_alignment_ros.core import camera as cam
from face_alignment_ros.core import face_crop
from face_alignment_ros.core.face_crop import crop_image
from face_alignment_ros.training.mesh_texture import MeshTools, face_region_mask
from face_alignment_ros.training.render_views import (
    Fits, jittered_crop_box, photometric_jitter, read_image, sample_record, visible_surface,
)
from face_alignment_ros.training.stage_io import Stage

PHOTO_SPLIT_CODE = {"photo_train": 2, "photo_heldout": 3}


def photo_view(image: np.ndarray, fits: Fits, row: int, tools: MeshTools, size: int,
               rng: np.random.Generator, jitter: bool = True) -> dict:
    """One crop of photo ``row`` (its image given) with per-pixel vertex ids of the fitted mesh."""
    model = tools.model
    camera_image = np.asarray(fits.camera[row], np.float32)
    params = np.asarray(fits.shape_params[row], np.float32)
    box = jittered_crop_box(camera_image, rng) if jitter else face_crop.canonical_crop_box(camera_image)
    crop, _ = crop_image(image, box, size)
    camera = face_crop.camera_image_to_crop(camera_image, box, size).astype(np.float32)
    verts = model.vertices(params)
    tv = cam.transform(camera, verts)
    vid, _, _, _ = visible_surface(tv, model.triangles, size)
    region = face_region_mask(face_crop.image_to_crop(fits.landmarks[row], box, size), (size, size))
    vid[~region] = BACKGROUND_ID
    image_out = photometric_jitter(crop, rng) if jitter else crop
    return sample_record(tools, image_out, vid, camera, params, verts, tv, row, 0,
                         yaw_bin(np.degrees(camera[cam.YAW])))


def make_photo_views(stage: Stage, fits: Fits, rows: dict, tools: MeshTools, size: int, views: int,
                     seed: int) -> dict:
    """Write ``photo_{split}_*`` for the training rows (``views`` crops each) and the held-out rows
    (one canonical crop each). Skipped when the same settings already made them. -> counts."""
    config = {"fits": fits.fingerprint(), "size": size, "seed": seed, "views": views,
              "rows": {s: len(rows[PHOTO_SPLITS[s]]) for s in PHOTO_SPLITS}, "version": 1}
    per_photo = {"photo_train": views, "photo_heldout": 1}
    counts = {s: config["rows"][s] * per_photo[s] for s in PHOTO_SPLITS}
    done_path = stage.path(PHOTO_VIEWS_FILE)
    if done_path.exists():
        import json

        if json.loads(done_path.read_text()).get("config") == config:
            stage.log.info("photo views already made with these settings")
            return counts
        done_path.unlink()
    for split, source in PHOTO_SPLITS.items():
        split_rows = rows[source]
        n = counts[split]
        out = open_outputs(stage.dir, split, n, size, "w+")
        k = 0
        for row in tqdm(split_rows, desc=f"synthesize {split}", unit="photo", mininterval=5):
            image = read_image(fits, int(row))
            for v in range(per_photo[split]):
                rng = np.random.default_rng([seed, PHOTO_SPLIT_CODE[split], int(row), v])
                sample = photo_view(image, fits, int(row), tools, size, rng, jitter=split == "photo_train")
                sample["view"] = v
                for key, value in sample.items():
                    out[key][k] = value
                k += 1
        for arr in out.values():
            arr.flush()
        labelled = float((out["vertex_ids"] != BACKGROUND_ID).mean())
        stage.log.info("%s: %d photo crops, %.1f%% of pixels labelled", split, n, 100 * labelled)
    stage.save_json(PHOTO_VIEWS_FILE, {"config": config, "counts": counts})
    return counts
