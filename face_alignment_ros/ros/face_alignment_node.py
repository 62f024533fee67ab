"""``face_alignment_node``: camera images in; landmarks, meshes, head TF, diagnostics out.

Threads: the executor runs the subscription callbacks, which only store the newest image (a
frame still waiting when a newer one arrives is dropped and counted), the newest CameraInfo and
the newest descent model. One worker thread takes the newest image, applies a pending descent
model first (so models change only between frames), runs the pipeline and publishes.

Every callback and the worker loop survive their own exceptions (``CallbackGuard``): they are
logged, counted in diagnostics, and the node goes on (docs/ros.md, "Robustness").
"""
from __future__ import annotations

import hashlib
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.expand_topic_name import expand_topic_name
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header
from visualization_msgs.msg import MarkerArray

from face_alignment_ros.core.descent_model import DescentModel
from face_alignment_ros.core.face_detector import available_detectors
from face_alignment_ros.core.morphable_model import ModelFileError
from face_alignment_ros.msg import DescentModel as DescentModelMsg
from face_alignment_ros.msg import FaceMeshArray, LandmarksArray, MeshTopology
from face_alignment_ros.ros import diagnostics as diag
from face_alignment_ros.ros.callbacks import CallbackGuard
from face_alignment_ros.ros.hri import HriFacePublisher
from face_alignment_ros.ros.image_conversion import ImageConversionError
from face_alignment_ros.ros.parameters import Param, ParameterSet, frame_prefix_check
from face_alignment_ros.ros.pipeline import FramePipeline, PipelineConfig
from face_alignment_ros.ros.qos import DIAGNOSTICS_QOS, IMAGE_RELIABILITY, LATCHED_QOS, OUTPUT_QOS, image_qos
from face_alignment_ros.ros.tf import TfPublisher
from face_alignment_ros.ros.topics import camera_info_beside

NODE_NAME = "face_alignment_node"
IMAGE_TRANSPORTS = ("raw", "compressed")

PARAMS = [
    Param("image_reliability", "best_effort",
          "QoS reliability of the image subscription. best_effort (sensor-data QoS) is served by "
          "best-effort and reliable publishers; reliable only by reliable ones.",
          choices=IMAGE_RELIABILITY, read_only=True),
    Param("image_transport", "raw",
          "raw: sensor_msgs/Image on image; compressed: sensor_msgs/CompressedImage (jpeg or png) on "
          "<image>/compressed, the image_transport convention.", choices=IMAGE_TRANSPORTS, read_only=True),
    Param("use_camera_info", True,
          "Subscribe to camera_info and use its K for the metric pose; without a valid CameraInfo "
          "focal_length_px / horizontal_fov_deg are used.", read_only=True),
    Param("camera_info_topic", "",
          "CameraInfo topic; empty means a remap of camera_info, else camera_info beside the image topic "
          "(/cam/image_raw -> /cam/camera_info), as image_transport resolves it.", read_only=True),
    Param("focal_length_px", 0.0,
          "Focal length in pixels assumed without CameraInfo; 0 derives it from horizontal_fov_deg.",
          range=(0.0, 100000.0)),
    Param("horizontal_fov_deg", 60.0,
          "Horizontal field of view assumed without CameraInfo when focal_length_px is 0.",
          range=(1.0, 179.0)),
    Param("detector", "default", "Face detector of the core (docs/detector.md).",
          choices=["default", *available_detectors()], read_only=True),
    Param("dff_weights", "",
          "DFF network weights file; empty means the shipped assets/dff_weights.pt. Unused by SIFT models.",
          read_only=True),
    Param("device", "auto", "Device of the DFF network (auto: CUDA when available).", choices=["auto", "cpu", "cuda"],
          read_only=True),
    Param("num_threads", 0, "CPU threads of the DFF network under the core's thread policy (core/threads.py: "
          "detector, OpenCV, BLAS and numba stay on one thread); 0 is its default, all cores up to 2.",
          range=(0, 256), read_only=True),
    Param("redetect_every", 10, "Run the detector every N frames while tracking.", range=(1, 10000)),
    Param("min_confidence", 0.3, "Re-detect when a tracked face's alignment confidence falls below this.",
          range=(0.0, 1.0)),
    Param("max_faces", 8, "Most faces aligned per frame (highest detector scores first).", range=(1, 64)),
    Param("smoothing", False, "Filter each face's landmarks and pose over time (One Euro filter): steadier, a little "
          "lag. Off for evaluation."),
    Param("smoothing_min_cutoff", 1.0, "Smoothing cutoff (Hz) of a face at rest: lower is steadier, lags more.",
          range=(0.01, 100.0)),
    Param("smoothing_beta", 10.0, "Smoothing cutoff added (Hz) per face span or radian per second of motion: higher "
          "lags less on fast motion.", range=(0.0, 1000.0)),
    Param("flip_average", False, "Also align each face's mirrored crop and average the landmarks: more accurate "
          "(held-out photos 5.23 -> 5.06% inter-pupil), about twice the alignment time (docs/training.md, round 12)."),
    Param("second_pass", False, "Align each face the detector finds a second time from its own landmark box: more "
          "accurate (held-out photos from the detector 5.23 -> 5.10%), on detection frames only, where it about "
          "doubles the alignment time (docs/training.md, round 13)."),
    Param("publish_tf", True, "Broadcast the head frames face_<id> (REP-155) on TF."),
    Param("publish_gaze", False, "Also broadcast gaze_<id> (optical axes, z along the head's x)."),
    Param("face_frame_prefix", "face_", "Head frame name = prefix + face id.", check=frame_prefix_check),
    Param("gaze_frame_prefix", "gaze_", "Gaze frame name = prefix + face id.", check=frame_prefix_check),
    Param("hri", True, "Publish the ROS4HRI (REP-155) face topics /humans/faces/... (docs/ros.md, ROS4HRI).",
          read_only=True),
    Param("publish_debug_image", False, "Publish debug/image: the input with mesh, landmarks and axes drawn."),
    Param("publish_markers", False, "Publish debug/markers: the mesh as a TRIANGLE_LIST and the landmarks."),
    Param("diagnostics_period", 1.0, "Seconds between /diagnostics messages.", range=(0.05, 60.0),
          read_only=True),
]


def image_subscription(node: Node, transport: str) -> tuple[type, str]:
    """(message type, topic) of the image input. Compressed images are on the resolved (remapped)
    image topic + "/compressed", as image_transport names them."""
    if transport == "compressed":
        return CompressedImage, node.resolve_topic_name("image") + "/compressed"
    return Image, "image"


class FaceAlignmentNode(Node):
    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        self.stats = diag.PipelineStats()
        guard = CallbackGuard(self, self.stats.callback_error)
        self._stamp_gaps = diag.StampGapCounter()
        self.params = ParameterSet(self, PARAMS, on_change=self._on_params)
        p = self.params
        self.pipeline = FramePipeline(PipelineConfig.from_values(self.params.values), dff_weights=p["dff_weights"],
                                      detector=p["detector"], device=p["device"], threads=p["num_threads"])

        self._cond = threading.Condition()
        self._frame = None          # newest unprocessed Image
        self._camera_info = None
        self._pending_model = None  # (DescentModel, sha256) waiting for the worker
        self._pending_config = None
        self._stop = False

        self.pub_landmarks = self.create_publisher(LandmarksArray, "landmarks", OUTPUT_QOS)
        self.pub_mesh = self.create_publisher(FaceMeshArray, "face_mesh", OUTPUT_QOS)
        self.pub_topology = self.create_publisher(MeshTopology, "mesh_topology", LATCHED_QOS)
        self.pub_debug = self.create_publisher(Image, "debug/image", OUTPUT_QOS)
        self.pub_markers = self.create_publisher(MarkerArray, "debug/markers", OUTPUT_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", DIAGNOSTICS_QOS)
        self.tf = TfPublisher(self)
        self.hri = HriFacePublisher(self) if p["hri"] else None

        inputs = ReentrantCallbackGroup()
        events = SubscriptionEventCallbacks(incompatible_qos=guard(self._on_incompatible_qos),
                                            message_lost=guard(self._on_message_lost))
        image_type, image_topic = image_subscription(self, p["image_transport"])
        self.create_subscription(image_type, image_topic, guard(self._on_image), image_qos(p["image_reliability"]),
                                 callback_group=inputs, event_callbacks=events)
        self.camera_info_topic = self._camera_info_topic() if p["use_camera_info"] else ""
        self.stats.camera_info_status(*self._camera_info_status(None, 0, 0))
        if p["use_camera_info"]:
            self.create_subscription(CameraInfo, self.camera_info_topic, guard(self._on_camera_info),
                                     image_qos(p["image_reliability"]), callback_group=inputs)
        self.create_subscription(DescentModelMsg, "descent_model", guard(self._on_descent_model), LATCHED_QOS,
                                 callback_group=MutuallyExclusiveCallbackGroup())
        self.create_timer(p["diagnostics_period"], guard(self._publish_diagnostics),
                          callback_group=MutuallyExclusiveCallbackGroup())
        self._worker = threading.Thread(target=self._run, name=f"{node_name}_worker", daemon=True)
        self._worker.start()
        self.get_logger().info(f"{diag.WAITING_FOR_MODEL} on {self.resolve_topic_name('descent_model')}; "
                               f"images from {self.resolve_topic_name(image_topic)} ({p['image_reliability']}), "
                               f"camera info from {self.camera_info_topic or '(unused)'}, TF via {self.tf.backend}")

    def _camera_info_topic(self) -> str:
        """The parameter camera_info_topic, else a remap of camera_info, else beside the image."""
        if self.params["camera_info_topic"]:
            return self.resolve_topic_name(self.params["camera_info_topic"])
        resolved = self.resolve_topic_name("camera_info")
        if resolved != expand_topic_name("camera_info", self.get_name(), self.get_namespace()):
            return resolved
        return camera_info_beside(self.resolve_topic_name("image"))

    # --- parameters -----------------------------------------------------------------------
    def _on_params(self, changed: dict) -> None:
        if hasattr(self, "pipeline"):
            with self._cond:  # the worker applies it between frames
                self._pending_config = PipelineConfig.from_values(self.params.values).__dict__

    # --- callbacks (executor threads): store only -----------------------------------------
    def _on_image(self, msg: Image | CompressedImage) -> None:
        with self._cond:
            self.stats.add(received=1)
            if self._frame is not None:
                self.stats.add(dropped=1)
            self._frame = msg
            self._cond.notify()
            missing = self._stamp_gaps.add(msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec)
        if missing:
            self.stats.lost(stamps=missing)
            self._warn_lost(f"{missing} frame(s) missing before stamp {msg.header.stamp.sec}."
                            f"{msg.header.stamp.nanosec:09d} (gap in a steady camera rate)")

    def _on_message_lost(self, info) -> None:
        self.stats.lost(transport=info.total_count_change)
        self._warn_lost(f"{info.total_count_change} image(s) lost in transport ({info.total_count} in all)")

    def _warn_lost(self, what: str) -> None:
        self.get_logger().warn(f"{diag.FRAMES_LOST}: {what}; {diag.TRANSPORT_HINT}", throttle_duration_sec=10.0)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._camera_info = msg

    def _on_descent_model(self, msg: DescentModelMsg) -> None:
        data = bytes(msg.npz_bytes)
        sha = hashlib.sha256(data).hexdigest()
        try:
            if msg.sha256 and msg.sha256.lower() != sha:
                raise ModelFileError(f"descent model message: sha256 {msg.sha256} does not match its bytes ({sha})")
            descent = DescentModel.from_bytes(data, source="descent_model message")
        except Exception as exc:  # any malformed message: report it, keep the current model
            reason = str(exc) if isinstance(exc, ModelFileError) else f"{type(exc).__name__}: {exc}"
            self.stats.model_rejected(reason)
            self.get_logger().error(f"rejected descent model: {reason}")
            return
        with self._cond:
            self._pending_model = (descent, sha)
            self._cond.notify()
        self.get_logger().info(f"received descent model {sha[:12]} ({descent.descriptor}, "
                               f"{descent.iterations} iterations); used from the next frame")

    def _on_incompatible_qos(self, event) -> None:
        self.get_logger().warn(f"an image publisher has incompatible QoS (policy {event.last_policy_kind}); "
                               "with image_reliability=reliable, best-effort cameras are not received")

    # --- worker ---------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and self._frame is None and self._pending_model is None:
                    self._cond.wait()
                if self._stop:
                    return
                frame, self._frame = self._frame, None
                pending, self._pending_model = self._pending_model, None
                config, self._pending_config = self._pending_config, None
            try:
                if config is not None:
                    self.pipeline.update_config(config)
                if pending is not None:
                    self._apply_model(*pending)
                if frame is not None:
                    self._process(frame)
            except Exception as exc:  # the worker must outlive any one frame
                self.stats.callback_error(f"worker: {type(exc).__name__}: {exc}")
                self.get_logger().error(f"worker: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0)

    def _apply_model(self, descent: DescentModel, sha: str) -> None:
        try:
            self.pipeline.set_descent_model(descent, sha)
        except Exception as exc:  # e.g. missing DFF weights, descriptor mismatch
            self.stats.model_rejected(f"{type(exc).__name__}: {exc}")
            self.get_logger().error(f"cannot use descent model {sha[:12]}: {exc}")
            return
        self.stats.model_in_use(sha)
        topology = self.pipeline.take_topology()
        if topology is not None:
            self.pub_topology.publish(topology)
        self.get_logger().info(f"descent model {sha[:12]} in use")

    def _process(self, msg: Image | CompressedImage) -> None:
        if not self.pipeline.ready:
            self.stats.add(without_model=1)
            return
        t0 = time.perf_counter()
        camera_info = self._camera_info
        try:
            out = self.pipeline.process(msg, camera_info)
        except ImageConversionError as exc:
            self.stats.error(str(exc), bad=True)
            self.get_logger().error(f"frame dropped: {exc}", throttle_duration_sec=5.0)
            return
        except Exception as exc:  # keep running: report, skip the frame
            self.stats.error(f"{type(exc).__name__}: {exc}")
            self.get_logger().error(f"frame failed: {type(exc).__name__}: {exc}", throttle_duration_sec=5.0)
            return
        self._report_camera_info(camera_info, out.image.shape[1], out.image.shape[0])
        if out.topology is not None:
            self.pub_topology.publish(out.topology)
        self.pub_landmarks.publish(out.landmarks)
        self.pub_mesh.publish(out.meshes)
        if self.params["publish_tf"]:
            self.tf.send(out.transforms)
        if self.hri is not None:
            self.hri.publish(out)
        if out.debug_image is not None:
            self.pub_debug.publish(out.debug_image)
        if out.markers is not None:
            self.pub_markers.publish(out.markers)
        self.stats.frame_done(len(out.faces), (time.perf_counter() - t0) * 1e3, out.stages_ms)

    def _camera_info_status(self, camera_info, width: int, height: int) -> tuple[str, bool]:
        """(what the intrinsics come from, in words; whether that is a valid CameraInfo)."""
        p = self.params
        assumed = "assuming " + (f"focal_length_px {p['focal_length_px']:g}" if p["focal_length_px"] > 0
                                 else f"horizontal_fov_deg {p['horizontal_fov_deg']:g}")
        if not p["use_camera_info"]:
            return f"not used (use_camera_info false); {assumed}", True
        if camera_info is None:
            return f"{diag.NO_CAMERA_INFO} on {self.camera_info_topic} yet; {assumed}", False
        if self.pipeline.camera_intrinsics(width, height, camera_info) is None:
            k = list(camera_info.k)
            return (f"{diag.NO_CAMERA_INFO}: K of {self.camera_info_topic} rejected for {width}x{height} images "
                    f"(fx {k[0]:g}, fy {k[4]:g}, cx {k[2]:g}, cy {k[5]:g}); {assumed}"), False
        return f"K from {self.camera_info_topic}", True

    def _report_camera_info(self, camera_info, width: int, height: int) -> None:
        text, valid = self._camera_info_status(camera_info, width, height)  # K's check is cached in the pipeline
        self.stats.camera_info_status(text, valid)
        if not valid:
            self.get_logger().warn(text, throttle_duration_sec=10.0)

    def _publish_diagnostics(self) -> None:
        self.pub_diag.publish(diag.diagnostic_array(self.get_clock().now().to_msg(), self.get_name(),
                                                    self.stats, self.pipeline.ready))

    def destroy_node(self):
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._worker.join(timeout=10.0)
        if self.hri is not None and self.hri.last_header is not None and self.context.ok():
            # tell ROS4HRI clients that the faces are gone, as hri_face_detect does on exit
            self.hri.close(Header(frame_id=self.hri.last_header.frame_id, stamp=self.get_clock().now().to_msg()))
        return super().destroy_node()


def main(args=None) -> int:
    from face_alignment_ros.ros.node_main import spin_node

    return spin_node(FaceAlignmentNode, executor_factory=rclpy.executors.MultiThreadedExecutor, args=args)
