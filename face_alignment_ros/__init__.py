"""face_alignment_ros: Deep Face Feature (DFF) face alignment with a ROS 2 adapter.

The core (``face_alignment_ros.core``) never imports rclpy. ``FaceAligner`` is imported
lazily so that ``import face_alignment_ros`` stays cheap. The floors of the package:
docs/ARCHITECTURE.md.
"""
import pkgutil

# The rosidl-generated ``face_alignment_ros.msg`` is installed into site-packages, while this
# source package may live elsewhere (editable install): merge both into one package.
__path__ = pkgutil.extend_path(__path__, __name__)

__all__ = ["FaceAligner", "FaceResult"]


def __getattr__(name):
    if name in ("FaceAligner", "FaceResult"):
        from face_alignment_ros.core import aligner

        return getattr(aligner, name)
    raise AttributeError(name)
