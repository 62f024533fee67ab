"""The ROS4HRI (REP-155) face interface, so that HRI stacks (libhri / pyhri, hri_* nodes) take
our faces as they take ``hri_face_detect``'s:

- ``/humans/faces/tracked`` (hri_msgs/IdsList): the ids of the faces of every processed frame;
- per face ``/humans/faces/<id>/roi``, ``landmarks``, ``cropped`` and ``aligned``; these topics
  appear when the face is first tracked and are removed once it is lost;
- the TF frames ``face_<id>`` and ``gaze_<id>`` (ros/pipeline.py) use the same ids.

The ids are ``ros/face_ids.py``'s. Values come from ``core/face_views.py``; this module only
fills messages and keeps the per-face publishers.
"""
from __future__ import annotations

from dataclasses import dataclass

from hri_msgs.msg import FacialLandmarks, IdsList, NormalizedPointOfInterest2D, NormalizedRegionOfInterest2D
from rclpy.event_handler import PublisherEventCallbacks
from sensor_msgs.msg import Image

from face_alignment_ros.core import face_views
from face_alignment_ros.ros.face_ids import hri_id
from face_alignment_ros.ros.image_conversion import bgr_to_image_fields
from face_alignment_ros.ros.qos import HRI_QOS

FACES_NS = "/humans/faces"
# Per-face publishers come and go while the executor spins in other threads. rclpy's default
# QoS-event handlers are waitables, and destroying one while the executor builds its wait set
# can raise InvalidHandle in the executor's thread and stop it; without handlers, destroying a
# publisher touches nothing the executor uses.
_NO_EVENTS = PublisherEventCallbacks(use_default_callbacks=False)


@dataclass
class _FaceTopics:
    roi: object
    landmarks: object
    cropped: object
    aligned: object

    def all(self):
        return (self.roi, self.landmarks, self.cropped, self.aligned)


class HriFacePublisher:
    """Publishes a ``FrameOutput`` (ros/pipeline.py) on the REP-155 face topics."""

    def __init__(self, node, qos=HRI_QOS):
        self.node = node
        self.qos = qos
        self.pub_tracked = node.create_publisher(IdsList, f"{FACES_NS}/tracked", qos)
        self.faces: dict[str, _FaceTopics] = {}
        self.last_header = None  # of the last published frame

    def _topics(self, fid: str) -> _FaceTopics:
        if fid not in self.faces:
            ns = f"{FACES_NS}/{fid}"

            def pub(msg_type, topic):
                return self.node.create_publisher(msg_type, f"{ns}/{topic}", self.qos, event_callbacks=_NO_EVENTS)
            self.faces[fid] = _FaceTopics(pub(NormalizedRegionOfInterest2D, "roi"), pub(FacialLandmarks, "landmarks"),
                                          pub(Image, "cropped"), pub(Image, "aligned"))
        return self.faces[fid]

    def publish(self, out) -> list[str]:
        """Per-face topics of every face of ``out``, then the tracked ids; the topics of faces
        no longer tracked are removed. Returns the ids."""
        header, image = out.header, out.image
        height, width = image.shape[:2]
        ids = []
        for msg, tracked in zip(out.landmarks.faces, out.faces):
            fid, face = hri_id(msg.face_id), tracked.face
            ids.append(fid)
            topics = self._topics(fid)
            topics.roi.publish(roi_message(header, face, width, height))
            topics.landmarks.publish(landmarks_message(header, face, width, height))
            if topics.cropped.get_subscription_count() > 0:
                topics.cropped.publish(image_message(header, face_views.cropped_face(image, face)))
            if topics.aligned.get_subscription_count() > 0:
                topics.aligned.publish(image_message(header, face_views.aligned_face(image, face)))
        self.pub_tracked.publish(IdsList(header=header, ids=ids))
        self.last_header = header
        for fid in set(self.faces) - set(ids):
            self._remove(fid)
        return ids

    def _remove(self, fid: str) -> None:
        for pub in self.faces.pop(fid).all():
            self.node.destroy_publisher(pub)

    def close(self, header=None) -> None:
        """Remove every face's topics, e.g. when the node stops processing; with ``header``,
        first tell clients on /humans/faces/tracked (an empty list), as hri_face_detect does."""
        if header is not None:
            self.pub_tracked.publish(IdsList(header=header, ids=[]))
        for fid in list(self.faces):
            self._remove(fid)


def roi_message(header, face, width: int, height: int) -> NormalizedRegionOfInterest2D:
    xmin, ymin, xmax, ymax = (float(v) for v in face_views.face_region(face, width, height))
    return NormalizedRegionOfInterest2D(header=header, xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax,
                                        c=float(face.confidence))


def landmarks_message(header, face, width: int, height: int) -> FacialLandmarks:
    points, conf = face_views.face_points(face, width, height)
    return FacialLandmarks(header=header, height=int(height), width=int(width),
                           landmarks=[NormalizedPointOfInterest2D(x=float(x), y=float(y), c=float(c))
                                      for (x, y), c in zip(points, conf)])


def image_message(header, bgr) -> Image:
    return Image(header=header, **bgr_to_image_fields(bgr, "bgr8"))
