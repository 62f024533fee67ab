"""Tests of the mesh graph and the front-facing test in core.mesh_topology."""
import numpy as np

from face_alignment_ros.core.mesh_topology import front_facing, mesh_edges, triangle_edges, vertex_adjacency


def _grid_mesh(rows: int = 4, cols: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """A flat grid of vertices in image coordinates, two triangles per cell."""
    ys, xs = np.mgrid[0:rows, 0:cols]
    verts = np.stack([xs.ravel(), ys.ravel(), np.zeros(rows * cols)], 1).astype(np.float32)
    tris = []
    for r in range(rows - 1):
        for c in range(cols - 1):
            v = r * cols + c
            tris += [[v, v + 1, v + cols], [v + 1, v + cols + 1, v + cols]]
    return verts, np.array(tris, np.int32)


def test_vertex_adjacency_lists_each_neighbour_once_ascending():
    verts, tris = _grid_mesh()
    indptr, indices = vertex_adjacency(len(verts), tris)
    expected = [set() for _ in verts]
    for t in tris:
        for i in range(3):
            for j in range(3):
                if i != j:
                    expected[t[i]].add(int(t[j]))
    for v in range(len(verts)):
        assert indices[indptr[v]:indptr[v + 1]].tolist() == sorted(expected[v])
    assert indices.dtype == np.int32


def test_mesh_edges_are_the_unique_triangle_edges():
    _, tris = _grid_mesh()
    all_edges = triangle_edges(tris)
    assert len(all_edges) == 3 * len(tris) and np.all(all_edges[:, 0] < all_edges[:, 1])
    edges = mesh_edges(tris)
    # a 4 x 5 grid: 3 * 5 vertical + 4 * 4 horizontal + 3 * 4 diagonal edges
    assert len(edges) == 15 + 16 + 12
    assert {tuple(e) for e in edges} == {tuple(e) for e in all_edges}


def test_front_facing_by_winding_in_image_coordinates():
    verts, tris = _grid_mesh()
    # (v, v+1, v+cols) turns clockwise on screen (y down): a positive signed area, facing away
    assert not front_facing(verts, tris).any()
    assert front_facing(verts, tris[:, ::-1].copy()).all()
    flat = np.array([[0, 1, 2]], np.int32)  # collinear: no area, not front-facing
    assert not front_facing(np.array([[0, 0, 0], [1, 1, 0], [2, 2, 0]], np.float32), flat).any()
