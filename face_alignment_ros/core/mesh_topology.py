"""Mesh topology: the triangles of a face point cloud, the mesh's edges and vertex graph, and
which triangles face the camera.

The 3DMM wheel ships vertices but no triangles. The face is a height field over a vertical
cylinder behind it, so unwrapping it onto that cylinder and running a 2-D Delaunay triangulation
gives a clean surface mesh. Triangles that span holes or the open border have long edges and are
dropped.
"""
from __future__ import annotations

import numpy as np
from numba import njit
from scipy.spatial import Delaunay


def cylinder_unwrap(vertices: np.ndarray, axis_depth: float) -> np.ndarray:
    """Map (n, 3) vertices (model frame: x right, y down, z away from camera) to (n, 2)
    cylinder coordinates (arc length, height) around a vertical axis at x=0, z=axis_depth."""
    x, y, z = vertices[:, 0], vertices[:, 1], vertices[:, 2]
    theta = np.arctan2(x, axis_depth - z)
    radius = np.median(np.hypot(x, axis_depth - z))
    return np.stack([radius * theta, y], axis=1)


def edge_lengths(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """(m, 3) lengths of the edges (v0v1, v1v2, v2v0) of each triangle."""
    v = vertices[triangles]
    return np.linalg.norm(v - np.roll(v, -1, axis=1), axis=2)


def triangulate_face(vertices: np.ndarray, axis_depth: float, max_edge_ratio: float = 3.0) -> np.ndarray:
    """Triangulate a face point cloud; returns (m, 3) int32 triangles with outward normals.

    Triangles with an edge longer than ``max_edge_ratio`` times the median edge are dropped.
    """
    flat = cylinder_unwrap(vertices, axis_depth)
    triangles = Delaunay(flat).simplices.astype(np.int32)
    while True:  # dropping long edges lowers the median: repeat until stable
        lengths = edge_lengths(vertices, triangles)
        keep = lengths.max(axis=1) <= max_edge_ratio * np.median(lengths)
        if keep.all():
            break
        triangles = triangles[keep]
    return orient_outward(vertices, triangles, axis_depth)


def triangle_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Unnormalised normals (v1 - v0) x (v2 - v0)."""
    v = vertices[triangles]
    return np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])


def outward_directions(vertices: np.ndarray, triangles: np.ndarray, axis_depth: float) -> np.ndarray:
    """Direction from the cylinder axis to each triangle centroid (horizontal component)."""
    centroid = vertices[triangles].mean(axis=1)
    out = centroid - np.array([0.0, 0.0, axis_depth])
    out[:, 1] = 0.0
    return out


def orient_outward(vertices: np.ndarray, triangles: np.ndarray, axis_depth: float) -> np.ndarray:
    """Flip triangles whose normal points into the head."""
    inward = np.einsum("ij,ij->i", triangle_normals(vertices, triangles),
                       outward_directions(vertices, triangles, axis_depth)) < 0
    fixed = triangles.copy()
    fixed[inward] = fixed[inward][:, [0, 2, 1]]
    return fixed


def decimate_by_grid(vertices: np.ndarray, axis_depth: float, spacing: float) -> np.ndarray:
    """Indices of a subset of vertices, one per ``spacing``-sized cell of the unwrapped surface
    (the vertex nearest the cell centre), sorted ascending."""
    flat = cylinder_unwrap(vertices, axis_depth)
    cell = np.floor(flat / spacing).astype(np.int64)
    centre_dist = np.linalg.norm(flat - (cell + 0.5) * spacing, axis=1)
    key = (cell[:, 0] - cell[:, 0].min()) * 100000 + (cell[:, 1] - cell[:, 1].min())
    order = np.lexsort((centre_dist, key))
    first = np.ones(len(order), bool)
    first[1:] = key[order][1:] != key[order][:-1]
    return np.sort(order[first])


def triangle_edges(triangles: np.ndarray) -> np.ndarray:
    """(3m, 2) the three edges of each triangle, each as (lower, higher) vertex id; an edge shared
    by two triangles appears twice."""
    t = np.asarray(triangles)
    return np.sort(np.concatenate([t[:, [0, 1]], t[:, [1, 2]], t[:, [2, 0]]]), axis=1)


def mesh_edges(triangles: np.ndarray) -> np.ndarray:
    """(e, 2) the mesh's unique edges as (lower, higher) vertex id, sorted."""
    return np.unique(triangle_edges(triangles), axis=0)


def vertex_adjacency(n_vertices: int, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, indices int32) of the mesh's vertex graph: each vertex's neighbours, ascending."""
    e = mesh_edges(triangles).astype(np.int64)
    key = np.unique(np.concatenate([e[:, 0] * n_vertices + e[:, 1], e[:, 1] * n_vertices + e[:, 0]]))
    a, b = key // n_vertices, key % n_vertices
    indptr = np.zeros(n_vertices + 1, np.int64)
    np.cumsum(np.bincount(a, minlength=n_vertices), out=indptr[1:])
    return indptr, b.astype(np.int32)


@njit(cache=True, nogil=True)
def front_facing(tv, triangles):
    """(m,) bool: triangles whose outward normal faces the camera, for vertices ``tv`` already in
    image coordinates (y down): a negative signed image area."""
    out = np.empty(triangles.shape[0], np.bool_)
    for t in range(triangles.shape[0]):
        i0, i1, i2 = triangles[t, 0], triangles[t, 1], triangles[t, 2]
        area = ((tv[i1, 0] - tv[i0, 0]) * (tv[i2, 1] - tv[i0, 1])
                - (tv[i2, 0] - tv[i0, 0]) * (tv[i1, 1] - tv[i0, 1]))
        out[t] = area < 0
    return out
