"""QoS profiles of the package's topics (docs/ros.md, "QoS")."""
from __future__ import annotations

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)

IMAGE_RELIABILITY = ("best_effort", "reliable")


def image_qos(reliability: str = "best_effort") -> QoSProfile:
    """Camera input. Sensor-data QoS (best effort, keep last 5) by default: a best-effort
    subscription matches both best-effort and reliable publishers. "reliable" matches only
    reliable publishers, for pipelines that must not lose frames in transport (the node still
    keeps only the newest frame)."""
    if reliability not in IMAGE_RELIABILITY:
        raise ValueError(f"image reliability must be one of {IMAGE_RELIABILITY}, not {reliability!r}")
    if reliability == "best_effort":
        return qos_profile_sensor_data
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.VOLATILE)


# Per-frame outputs: reliable, a short queue (consumers that fall behind get the newest).
OUTPUT_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                        durability=DurabilityPolicy.VOLATILE)

# Published once, kept for late joiners ("latched"): mesh topology, descent model.
LATCHED_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)

# What tf2_ros' TransformBroadcaster uses on /tf.
TF_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                    durability=DurabilityPolicy.VOLATILE)

DIAGNOSTICS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.VOLATILE)

# ROS4HRI face topics (/humans/faces/...): what hri_face_detect uses (reliable, volatile, depth 1).
HRI_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.VOLATILE)
