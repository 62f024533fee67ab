"""Stage ``segment`` (paper Sec. III-B): random segmentations of the mean face into patches, the
class labels of the DFF's 100 angular-softmax heads.

Each segmentation is a centroidal Voronoi tessellation (CVT) of the face surface: seeds drawn at
random (area-uniform, seeded), then Lloyd iterations: assign every vertex to its nearest seed,
move each seed to the area-weighted centroid of its vertices, until the seeds stop moving.

Distances: the Lloyd iterations use plain 3-D Euclidean nearest seeds (one cKDTree query per
iteration). With 500 patches a patch is about 10 mm across while the face curves with radii of
several centimetres almost everywhere, so these cells equal geodesic ones there. Where the
surface folds back on itself (the ears, the eyelid slits) a Euclidean cell leaks across the fold
into pieces that are not connected to its seed on the surface; those pieces (about 0.5% of the
area) merge into the neighbouring patch they share most mesh edges with, so every patch is one
connected piece around its seed. ``run`` reports the area moved and any pieces left.

Region: the mesh's largest edge-connected component, i.e. the whole surface the renders show, so
each rendered face pixel has a class; the other vertices (in no triangle, or on the ~90 isolated
triangles the converted mesh has along its border) get label -1.

Output ``<work>/segment/segmentations.npz``:
  labels (n_segmentations, n_vertices) int16, patch id or -1 outside the region
  region (n_vertices,) bool
  seeds (n_segmentations, n_patches) int32 vertex nearest each patch's final seed (centroid)
  patch_area (n_segmentations, n_patches) float32 mm^2
  vertex_area (n_vertices,) float32 mm^2 (a third of each adjacent triangle)
"""
from __future__ import annotations

import argparse

import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from face_alignment_ros.common.render_format import SEGMENTATIONS_FILE
from face_alignment_ros.core import camera as cam
from face_alignment_ros.core.mesh_topology import mesh_edges, triangle_edges
from face_alignment_ros.core.morphable_model import MorphableModel
from face_alignment_ros.core.rasterizer import rasterize_ids
from face_alignment_ros.training.stage_io import Stage

N_SEGMENTATIONS = 100
N_PATCHES = 500
MAX_LLOYD_ITERATIONS = 60  # the energy is flat to 0.1% by then (lloyd_energy.png)
LLOYD_TOLERANCE_MM = 0.02


def vertex_areas(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(n,) area per vertex: a third of the area of each triangle it belongs to."""
    v = vertices[triangles].astype(np.float64)
    area = 0.5 * np.linalg.norm(np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), axis=1)
    return np.bincount(triangles.reshape(-1), np.repeat(area / 3.0, 3), minlength=len(vertices))


def mesh_graph(points: np.ndarray, triangles: np.ndarray) -> sparse.csr_matrix:
    """Symmetric sparse adjacency of the unique mesh edges (weights: 3-D edge length)."""
    edges = mesh_edges(triangles)
    length = np.linalg.norm(points[edges[:, 0]] - points[edges[:, 1]], axis=1)
    n = len(points)
    graph = sparse.coo_matrix((np.concatenate([length, length]),
                               (np.concatenate([edges[:, 0], edges[:, 1]]), np.concatenate([edges[:, 1], edges[:, 0]]))),
                              shape=(n, n))
    return graph.tocsr()


def _snap_unique(tree: cKDTree, seeds: np.ndarray, k: int = 8) -> np.ndarray:
    """Nearest point to each seed, never the same point for two seeds."""
    _, cand = tree.query(seeds, k=min(k, tree.n))
    cand = cand.reshape(len(seeds), -1)
    out = cand[:, 0].copy()
    taken: set[int] = set()
    for i in range(len(seeds)):
        free = [c for c in cand[i] if c not in taken]
        out[i] = free[0] if free else next(j for j in range(tree.n) if j not in taken)
        taken.add(int(out[i]))
    return out


def _reattach_pieces(graph: sparse.csr_matrix, labels: np.ndarray, seed_ids: np.ndarray,
                     max_rounds: int = 20) -> np.ndarray:
    """Merge each piece of a Euclidean cell that is cut off from its seed on the surface (across
    an ear or eyelid fold) into the neighbouring seed-connected patch it shares most mesh edges
    with; repeat until every patch is one edge-connected piece holding its seed."""
    coo = graph.tocoo()
    out = labels.copy()
    for _ in range(max_rounds):
        same = out[coo.row] == out[coo.col]
        pieces = connected_components(sparse.coo_matrix((coo.data[same], (coo.row[same], coo.col[same])),
                                                        shape=graph.shape), directed=False)[1]
        home = np.zeros(pieces.max() + 1, bool)
        home[pieces[seed_ids]] = True
        detached = ~home[pieces]
        if not detached.any():
            break
        # edges from a detached piece into a seed-connected patch vote for that patch
        vote = detached[coo.row] & ~detached[coo.col]
        if not vote.any():
            break
        pair, count = np.unique(np.stack([pieces[coo.row[vote]], out[coo.col[vote]]], 1), axis=0, return_counts=True)
        order = np.lexsort((-count, pair[:, 0]))  # per piece, the most shared edges first
        first = np.ones(len(order), bool)
        first[1:] = pair[order[1:], 0] != pair[order[:-1], 0]
        target = np.full(len(home), -1, np.int64)
        target[pair[order[first], 0]] = pair[order[first], 1]
        move = detached & (target[pieces] >= 0)
        out[move] = target[pieces[move]]
    return out


def lloyd_cvt(points: np.ndarray, weights: np.ndarray, n_patches: int, rng: np.random.Generator,
              max_iterations: int = MAX_LLOYD_ITERATIONS, point_tree: cKDTree | None = None,
              tolerance: float = LLOYD_TOLERANCE_MM, graph: sparse.csr_matrix | None = None):
    """CVT of weighted surface points by Lloyd iterations from random seeds.

    Seeds start at area-uniformly drawn points; each iteration moves them to the area-weighted
    centroid of their cell. A centroid lies a fraction of a millimetre inside the curved surface
    (patch radius^2 / (2 x curvature radius)), which leaves the nearest-seed cells on the surface
    unchanged, so seeds are not snapped during the iterations (snapping would stall them on the
    vertex grid). Stops when no seed moves more than ``tolerance``. The final seeds snap to
    distinct points; with ``graph`` (``mesh_graph``) the final labels are graph-geodesic nearest
    seeds (points the graph cannot reach keep their Euclidean label).

    Returns labels (k,) int, seeds (n_patches,) point indices, the CVT energy
    sum_i w_i |x_i - seed(x_i)|^2 per iteration, and the labels' Euclidean counterpart.
    """
    k = len(points)
    if not 0 < n_patches <= k:
        raise ValueError(f"need 0 < n_patches <= {k} points, got {n_patches}")
    point_tree = point_tree or cKDTree(points)
    weights = np.asarray(weights, np.float64)
    seeds = points[np.sort(rng.choice(k, size=n_patches, replace=False, p=weights / weights.sum()))]
    energy = []
    for _ in range(max_iterations):
        dist, labels = cKDTree(seeds).query(points)
        energy.append(float(np.sum(weights * dist ** 2)))
        mass = np.bincount(labels, weights, minlength=n_patches)
        centroid = np.stack([np.bincount(labels, weights * points[:, d], minlength=n_patches)
                             for d in range(3)], axis=1) / np.maximum(mass, 1e-300)[:, None]
        empty = mass <= 0
        if empty.any():  # a starved seed restarts at the worst-covered points (deterministic)
            centroid[empty] = points[np.argsort(-dist, kind="stable")[: int(empty.sum())]]
        moved = float(np.max(np.linalg.norm(centroid - seeds, axis=1)))
        seeds = centroid
        if moved < tolerance:
            break
    seed_ids = _snap_unique(point_tree, seeds)
    dist, euclid = cKDTree(points[seed_ids]).query(points)
    energy.append(float(np.sum(weights * dist ** 2)))
    labels = euclid
    if graph is not None:
        labels = _reattach_pieces(graph, euclid, seed_ids)
    return labels, seed_ids, energy, euclid


def disconnected_patches(labels: np.ndarray, vertex_ids: np.ndarray, triangles: np.ndarray, n_vertices: int) -> int:
    """Patches split into pieces on the mesh: sum over patches of (pieces - 1), counted on the
    mesh's largest connected component (the converted mesh also has a few isolated triangles)."""
    edges = triangle_edges(triangles)

    def components(e):
        graph = sparse.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n_vertices, n_vertices))
        return connected_components(graph, directed=False)[1]

    whole = components(edges)
    main = np.zeros(n_vertices, bool)
    main[vertex_ids] = True
    main &= whole == np.argmax(np.bincount(whole[vertex_ids]))
    full = -np.ones(n_vertices, np.int64)
    full[vertex_ids] = labels
    same = (full[edges[:, 0]] == full[edges[:, 1]]) & main[edges[:, 0]] & main[edges[:, 1]]
    comp = components(edges[same])
    return int(len(np.unique(comp[main])) - len(np.unique(full[main])))


def face_region(model: MorphableModel) -> np.ndarray:
    """(n_vertices,) bool: the largest edge-connected component of the mesh."""
    tri = model.triangles
    edges = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    graph = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])),
                              shape=(model.n_vertices, model.n_vertices))
    comp = connected_components(graph, directed=False)[1]
    used = np.zeros(model.n_vertices, bool)
    used[tri.reshape(-1)] = True
    return used & (comp == np.argmax(np.bincount(comp[used])))


def segment_mean_face(model: MorphableModel, n_segmentations: int, n_patches: int, rng: np.random.Generator,
                      max_iterations: int = MAX_LLOYD_ITERATIONS, progress: bool = False,
                      on_segmentation=None, geodesic: bool = True) -> dict:
    """All segmentations of the mean face; see the module docstring for the returned arrays."""
    from tqdm import tqdm

    mean = model.mean
    region = face_region(model)
    ids = np.flatnonzero(region)
    vertex_area = vertex_areas(mean, model.triangles)
    points, weights = mean[ids].astype(np.float64), vertex_area[ids]
    tree = cKDTree(points)
    inside = region[model.triangles].all(axis=1)
    local = np.searchsorted(ids, model.triangles[inside])
    graph = mesh_graph(points, local) if geodesic else None
    labels = -np.ones((n_segmentations, model.n_vertices), np.int16)
    seeds = np.zeros((n_segmentations, n_patches), np.int32)
    patch_area = np.zeros((n_segmentations, n_patches), np.float32)
    for s in tqdm(range(n_segmentations), desc="segment", unit="seg", disable=not progress):
        lab, seed, energy, euclid = lloyd_cvt(points, weights, n_patches, rng, max_iterations, tree, graph=graph)
        labels[s, ids] = lab
        seeds[s] = ids[seed]
        patch_area[s] = np.bincount(lab, weights, minlength=n_patches)
        if on_segmentation is not None:
            on_segmentation(s, lab, energy, patch_area[s], ids, float(weights[lab != euclid].sum() / weights.sum()))
    return {"labels": labels, "region": region, "seeds": seeds, "patch_area": patch_area,
            "vertex_area": vertex_area.astype(np.float32)}


def border_vertices(triangles: np.ndarray, n_vertices: int) -> np.ndarray:
    """(n,) bool: vertices on a mesh edge that only one triangle has (the open border)."""
    uniq, count = np.unique(triangle_edges(triangles), axis=0, return_counts=True)
    out = np.zeros(n_vertices, bool)
    out[uniq[count == 1].reshape(-1)] = True
    return out


def area_cv(patch_area: np.ndarray) -> float:
    """Coefficient of variation (std / mean) of patch areas."""
    return float(np.std(patch_area) / np.mean(patch_area))


def render_labels(model: MorphableModel, labels: np.ndarray, yaw_deg: float, size: int = 320,
                  seed: int = 0) -> np.ndarray:
    """BGR image of the mean face, each patch a random colour, Lambert-shaded, -1 in grey."""
    palette = np.random.default_rng(seed).integers(40, 256, size=(int(labels.max()) + 2, 3)).astype(np.float32)
    palette[-1] = 128  # label -1 indexes the last row
    mean = model.mean
    extent = float(np.max(mean[:, :2].max(0) - mean[:, :2].min(0)))
    scale = 0.92 * size / extent
    camera = np.array([scale, 0.0, np.radians(yaw_deg), 0.0, size / 2, size / 2], np.float32)
    camera[cam.TX:cam.TY + 1] -= cam.project(camera, mean.mean(0, keepdims=True))[0] - size / 2
    verts = cam.transform(camera, mean)
    _, tri_id, bary = rasterize_ids(verts, model.triangles, size, size)
    image = np.zeros((size, size, 3), np.float32)
    hit = tri_id >= 0
    tri = model.triangles[tri_id[hit]]
    vertex = tri[np.arange(len(tri)), np.argmax(bary[hit], axis=1)]
    v = verts[model.triangles].astype(np.float64)
    normal = np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-12
    # Outward normals face the camera with a negative depth component (depth grows away).
    shade = 0.3 + 0.7 * np.clip(-normal[tri_id[hit], 2], 0, 1)
    image[hit] = palette[labels[vertex]] * shade[:, None]
    return np.clip(image, 0, 255).astype(np.uint8)


def _plot_areas(stage: Stage, patch_area: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(patch_area.reshape(-1), bins=80)
    ax.set_xlabel("patch area [mm^2]")
    ax.set_ylabel("patches (all segmentations)")
    ax.set_title(f"patch areas, CV {area_cv(patch_area):.3f}")
    fig.tight_layout()
    fig.savefig(stage.path("patch_areas.png"), dpi=100)
    plt.close(fig)


def _render_grid(stage: Stage, model: MorphableModel, labels: np.ndarray, rows, filename: str) -> None:
    import cv2

    tiles = []
    for r in rows:
        pair = []
        for yaw in (0.0, 60.0):
            tile = render_labels(model, labels[r], yaw, seed=int(r))
            cv2.putText(tile, f"segmentation {r}, yaw {yaw:.0f}", (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (255, 255, 255), 1, cv2.LINE_AA)
            pair.append(tile)
        tiles.append(np.hstack(pair))
    cv2.imwrite(str(stage.path(filename)), np.vstack(tiles))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--segmentations", type=int, default=N_SEGMENTATIONS,
                        help="number of random segmentations (default %(default)s)")
    parser.add_argument("--patches", type=int, default=N_PATCHES, help="patches per segmentation (default %(default)s)")
    parser.add_argument("--lloyd-iterations", type=int, default=MAX_LLOYD_ITERATIONS,
                        help="at most this many Lloyd iterations per segmentation (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    stage = Stage("segment", args.work, args.seed)
    stage.path("metrics.jsonl").unlink(missing_ok=True)  # a rerun recomputes everything
    rng = stage.rng()
    model = MorphableModel.load()
    stage.log.info("segmenting the mean face: %d segmentations x %d patches, <= %d Lloyd iterations, seed %d",
                   args.segmentations, args.patches, args.lloyd_iterations, args.seed)

    def on_segmentation(s, lab, energy, areas, ids, relabelled):
        if s == 0:
            for it, e in enumerate(energy):
                stage.record(lloyd_iteration=it, energy_seg0=e)
        stage.record(segmentation=s, lloyd_iterations=len(energy) - 1, energy=energy[-1], area_cv=area_cv(areas),
                     geodesic_relabelled_area=relabelled,
                     disconnected=disconnected_patches(lab, ids, model.triangles, model.n_vertices))

    out = segment_mean_face(model, args.segmentations, args.patches, rng, args.lloyd_iterations, True,
                            on_segmentation)
    tmp = stage.path("segmentations.tmp.npz")
    np.savez_compressed(tmp, n_patches=np.int32(args.patches), seed=np.int32(args.seed), **out)
    tmp.replace(stage.path(SEGMENTATIONS_FILE))
    seconds = stage.elapsed()

    rows = [r for r in stage.metrics() if "segmentation" in r]
    border = border_vertices(model.triangles, model.n_vertices) & out["region"]
    interior_cv = []
    for lab, areas in zip(out["labels"], out["patch_area"]):
        touches = np.zeros(args.patches, bool)
        touches[lab[border]] = True
        interior_cv.append(area_cv(areas[~touches]))
    cvs = np.array([r["area_cv"] for r in rows])
    iters = np.array([r["lloyd_iterations"] for r in rows])
    disc = np.array([r["disconnected"] for r in rows])
    summary = {
        "segmentations": args.segmentations, "patches": args.patches, "seed": args.seed,
        "region_vertices": int(out["region"].sum()), "n_vertices": model.n_vertices,
        "region_area_mm2": float(out["vertex_area"][out["region"]].sum()),
        "mean_patch_area_mm2": float(out["patch_area"].mean()),
        "area_cv_mean": float(cvs.mean()), "area_cv_max": float(cvs.max()),
        "area_cv_interior_patches_mean": float(np.mean(interior_cv)),
        "patch_area_mm2_min": float(out["patch_area"].min()), "patch_area_mm2_max": float(out["patch_area"].max()),
        "min_patch_vertices": int(min(np.bincount(lab[lab >= 0]).min() for lab in out["labels"])),
        "geodesic_relabelled_area_mean": float(np.mean([r["geodesic_relabelled_area"] for r in rows])),
        "lloyd_iterations_mean": float(iters.mean()), "lloyd_iterations_max": int(iters.max()),
        "disconnected_pieces_total": int(disc.sum()),
        "seconds": round(seconds, 1),
    }
    stage.save_json("summary.json", summary)
    stage.log.info("summary: %s", summary)
    stage.plot_curves("lloyd_iteration", ["energy_seg0"], "lloyd_energy.png", "Lloyd CVT energy, segmentation 0")
    stage.plot_curves("segmentation", ["area_cv", "lloyd_iterations", "disconnected"], "curves.png",
                      "per segmentation: patch-area CV, Lloyd iterations, extra components")
    _plot_areas(stage, out["patch_area"])
    _render_grid(stage, model, out["labels"], list(range(min(4, args.segmentations))), "segmentations.png")
    stage.log.info("wrote %s and segmentations.png (%.1f s)", stage.path(SEGMENTATIONS_FILE), stage.elapsed())
    return 0
