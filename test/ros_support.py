"""Support for the ROS tests: a per-process ROS domain and a collector of stamped outputs. Waiting on conditions is
``face_alignment_ros.ros.waiting``; models are ``common.stand_in_models.trained_or_stand_in_files``."""
from __future__ import annotations

import contextlib
import os
import threading


def domain_id(offset: int) -> int:
    """A ROS domain for one test module (offset 0..7, one per module, so that a module's
    leftovers never meet the next one's) that differs between concurrent test processes on the
    machine with high probability; within [10, 97] (valid on Linux)."""
    return 10 + (os.getpid() % 11) * 8 + offset % 8


def key(stamp) -> tuple[int, int]:
    """A header stamp as a dict key."""
    return (stamp.sec, stamp.nanosec)


class StampedCollector:
    """Keeps a graph's output messages by their header stamp (callbacks run on executor threads)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.tf = {}  # stamp -> {child frame: transform}

    def _store(self, table):
        def cb(msg):
            with self.lock:
                table[key(msg.header.stamp)] = msg
        return cb

    def _store_tf(self, msg):
        with self.lock:
            for t in msg.transforms:
                self.tf.setdefault(key(t.header.stamp), {})[t.child_frame_id] = t


@contextlib.contextmanager
def running_graph(tmp, offset: int, image_topic: str, client_name: str, aligner_overrides: dict, **graph_kwargs):
    """The one-process graph on the trained (or stand-in) models in ``tmp``, in its own context
    and domain (``domain_id(offset)``), started with a client node of ``client_name`` on its
    executor. Yields (graph, client node, context, (descent, weights, trained)); shuts all down."""
    import rclpy

    from face_alignment_ros.common.stand_in_models import trained_or_stand_in_files
    from face_alignment_ros.ros.graph import Graph

    files = descent, weights, _ = trained_or_stand_in_files(tmp / "models")
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id(offset))
    graph = Graph(image_topic, None, context=context,
                  aligner_overrides={"dff_weights": str(weights), **aligner_overrides},
                  model_overrides={"model_file": str(descent)}, **graph_kwargs)
    client_node = rclpy.create_node(client_name, context=context)
    graph.executor.add_node(client_node)
    graph.start()
    try:
        yield graph, client_node, context, files
    finally:
        graph.shutdown()
        client_node.destroy_node()
        rclpy.shutdown(context=context)
