"""Topic names that belong together."""
from __future__ import annotations


def camera_info_beside(image_topic: str) -> str:
    """The CameraInfo topic of an image topic, as image_transport resolves it: the last name
    component replaced, so ``/cam/image_raw`` -> ``/cam/camera_info``."""
    head, _, _ = image_topic.rpartition("/")
    return f"{head}/camera_info" if head or image_topic.startswith("/") else "camera_info"
