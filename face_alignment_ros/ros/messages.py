"""FaceResult (core) -> ROS messages. Copies numbers only; the geometry comes from
``core.head_frame`` (metric pose, 3D points)."""
from __future__ import annotations

import array
import zlib

import numpy as np
from builtin_interfaces.msg import Duration
from geometry_msgs.msg import Point, Pose, Quaternion, TransformStamped, Vector3
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from face_alignment_ros.core.head_frame import HEAD_FROM_GAZE, MetricPose, quaternion_xyzw
from face_alignment_ros.msg import FaceMesh, Landmarks, MeshTopology


def f32(values) -> array.array:
    """A float32[] field value (array.array is rclpy's fast path)."""
    out = array.array("f")
    out.frombytes(np.ascontiguousarray(values, np.float32).reshape(-1).tobytes())
    return out


def u32(values) -> array.array:
    out = array.array("I")
    out.frombytes(np.ascontiguousarray(values, np.uint32).reshape(-1).tobytes())
    return out


def topology_id(triangles: np.ndarray) -> int:
    """A stable id of a triangle list (CRC-32 of its bytes)."""
    return zlib.crc32(np.ascontiguousarray(triangles, np.uint32).tobytes()) & 0xFFFFFFFF


def mesh_topology(triangles: np.ndarray, vertex_count: int) -> MeshTopology:
    return MeshTopology(topology_id=topology_id(triangles), vertex_count=int(vertex_count), triangles=u32(triangles))


def pose(position_m, rotation) -> Pose:
    x, y, z, w = (float(v) for v in quaternion_xyzw(rotation))
    p = [float(v) for v in position_m]
    return Pose(position=Point(x=p[0], y=p[1], z=p[2]), orientation=Quaternion(x=x, y=y, z=z, w=w))


def landmarks(header, face_id: int, face, points_3d_m: np.ndarray | None) -> Landmarks:
    return Landmarks(header=header, face_id=int(face_id), points_2d=f32(face.landmarks),
                     visible=[bool(v) for v in face.visible], score=float(face.score),
                     confidence=float(face.confidence),
                     points_3d=f32(points_3d_m if points_3d_m is not None else []))


def face_mesh(header, face_id: int, face, vertices_m: np.ndarray, topo_id: int, metric: MetricPose) -> FaceMesh:
    return FaceMesh(header=header, face_id=int(face_id), vertices=f32(vertices_m), topology_id=int(topo_id),
                    shape_params=f32(face.shape_params), expression_params=f32(face.expression_params),
                    head_pose=pose(metric.head_position_m, metric.head_rotation))


def transform(header, child_frame_id: str, pose_msg: Pose) -> TransformStamped:
    t = TransformStamped(header=header, child_frame_id=child_frame_id)
    p, q = pose_msg.position, pose_msg.orientation
    t.transform.translation = Vector3(x=p.x, y=p.y, z=p.z)
    t.transform.rotation = q
    return t


def gaze_transform(header_stamp, head_frame: str, gaze_frame: str) -> TransformStamped:
    """gaze_<id> in face_<id>: same origin, optical axes (HEAD_FROM_GAZE)."""
    t = TransformStamped(child_frame_id=gaze_frame)
    t.header.stamp = header_stamp
    t.header.frame_id = head_frame
    x, y, z, w = (float(v) for v in quaternion_xyzw(HEAD_FROM_GAZE))
    t.transform.rotation = Quaternion(x=x, y=y, z=z, w=w)
    return t


def _points(xyz: np.ndarray) -> list:
    return [Point(x=float(a), y=float(b), z=float(c)) for a, b, c in np.asarray(xyz, np.float64)]


def markers(header, faces) -> MarkerArray:
    """RViz markers: DELETEALL, then per face the mesh as a TRIANGLE_LIST and the landmarks as a
    SPHERE_LIST. ``faces``: (face_id, vertices_m, triangles, landmarks_m) tuples."""
    out = MarkerArray(markers=[Marker(header=header, action=Marker.DELETEALL)])
    life = Duration(sec=1)
    for face_id, verts, tris, lms in faces:
        mesh = Marker(header=header, ns="face_mesh", id=int(face_id), type=Marker.TRIANGLE_LIST,
                      action=Marker.ADD, lifetime=life)
        mesh.pose.orientation.w = 1.0
        mesh.scale.x = mesh.scale.y = mesh.scale.z = 1.0
        mesh.color = ColorRGBA(r=0.8, g=0.7, b=0.6, a=0.8)
        mesh.points = _points(np.asarray(verts)[np.asarray(tris).reshape(-1)])
        dots = Marker(header=header, ns="landmarks", id=int(face_id), type=Marker.SPHERE_LIST,
                      action=Marker.ADD, lifetime=life)
        dots.pose.orientation.w = 1.0
        dots.scale.x = dots.scale.y = dots.scale.z = 0.004
        dots.color = ColorRGBA(r=0.1, g=1.0, b=0.2, a=1.0)
        dots.points = _points(lms)
        out.markers += [mesh, dots]
    return out
