"""face-align-ros: the package's ROS graph in one process (what launch/face_alignment.launch.py
starts with launch_ros): face_alignment_node + descent_model_node on a MultiThreadedExecutor,
the lifecycle node configured and activated through its real change_state services.

    face-align-ros --image-topic /camera/image_raw --params config/face_alignment.yaml
      (CameraInfo from /camera/camera_info, beside the image; --camera-info-topic to choose)
    face-align-ros --demo --out out/ros_demo      # sample stream of a real face, overlay PNGs
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path


def _default_params() -> str | None:
    from face_alignment_ros.core import resources

    path = resources.REPO_ROOT / "config" / "face_alignment.yaml"
    if path.is_file():
        return str(path)
    try:
        from ament_index_python.packages import get_package_share_directory

        path = Path(get_package_share_directory("face_alignment_ros")) / "config" / "face_alignment.yaml"
        return str(path) if path.is_file() else None
    except Exception:
        return None


def run(args) -> int:
    import rclpy

    from face_alignment_ros.ros.graph import Graph

    rclpy.init()
    overrides = {"image_transport": args.image_transport} if args.image_transport else None
    graph = Graph(args.image_topic, args.params, args.namespace, aligner_overrides=overrides,
                  camera_info_topic=args.camera_info_topic).start()
    try:
        if not graph.bring_up(args.timeout):
            return 1
        graph.manager.get_logger().info("descent model active; processing images (Ctrl-C to stop)")
        return serve(graph)
    except KeyboardInterrupt:
        return 0
    finally:
        graph.shutdown()
        rclpy.try_shutdown()


def serve(graph) -> int:
    """Wait while the graph runs: 0 after a shutdown, 1 when its executor died (never a
    process that lives on without one)."""
    import rclpy

    while rclpy.ok(context=graph.context) and not graph.wait(0.5):
        pass
    if graph.failure is not None:
        print(f"face-align-ros: executor stopped by {type(graph.failure).__name__}: {graph.failure}",
              file=sys.stderr)
        return 1
    return 0


def demo(args) -> int:
    """Sample stream -> graph -> printed results and overlay PNGs."""
    import cv2
    import rclpy
    from sensor_msgs.msg import Image

    from face_alignment_ros.msg import LandmarksArray
    from face_alignment_ros.ros.face_ids import hri_id
    from face_alignment_ros.ros.graph import Graph
    from face_alignment_ros.ros.image_conversion import bgr_to_image_fields, image_to_bgr
    from face_alignment_ros.ros.qos import OUTPUT_QOS, image_qos
    from face_alignment_ros.ros.sample_stream import sample_frames
    from face_alignment_ros.core import resources

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not resources.trained_models_present("dff"):
        print(f"face-align-ros: no trained DFF model in the package. {resources.TRAIN_HINT}", file=sys.stderr)
        return 2
    shipped = resources.shipped_models("dff")
    descent, weights = shipped.descent, shipped.dff_weights
    rclpy.init()
    graph = Graph("/camera/image_raw", args.params, aligner_overrides={
        "publish_debug_image": True, "dff_weights": str(weights)}, model_overrides={"model_file": str(descent)})
    feeder = rclpy.create_node("face_align_demo_camera")
    graph.executor.add_node(feeder)
    results, overlays = {}, {}
    got = threading.Condition()

    def on_landmarks(msg):
        with got:
            results[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = (time.perf_counter(), msg)
            got.notify_all()

    def on_overlay(msg):
        with got:
            overlays[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg
            got.notify_all()

    feeder.create_subscription(LandmarksArray, "/landmarks", on_landmarks, OUTPUT_QOS)
    feeder.create_subscription(Image, "/debug/image", on_overlay, OUTPUT_QOS)
    pub = feeder.create_publisher(Image, "/camera/image_raw", image_qos())
    graph.start()
    try:
        if not graph.bring_up(args.timeout):
            return 1
        print(f"graph up; {args.frames} frames of {args.width}x{args.height} (astronaut photo, synthetic motion)")
        for i, frame in enumerate(sample_frames(args.frames, args.width, args.height)):
            msg = Image(**bgr_to_image_fields(frame, "rgb8"))
            msg.header.frame_id = "camera_optical_frame"
            msg.header.stamp = feeder.get_clock().now().to_msg()
            key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
            sent = time.perf_counter()
            pub.publish(msg)
            with got:  # one frame at a time: every frame is processed, none dropped
                if not got.wait_for(lambda: key in results and key in overlays, timeout=args.timeout):
                    print(f"frame {i}: no result within {args.timeout} s")
                    continue
                done, lm = results[key]
                overlay = overlays.pop(key)
            faces = " | ".join(
                f"face_{hri_id(f.face_id)}: score {f.score:.2f} conf {f.confidence:.2f} "
                f"nose tip ({f.points_2d[60]:.0f}, {f.points_2d[61]:.0f}) px, sellion at "
                f"({f.points_3d[81]:+.3f}, {f.points_3d[82]:+.3f}, {f.points_3d[83]:.3f}) m"
                for f in lm.faces) or "no face"
            print(f"frame {i:3d} t={key[0]}.{key[1]:09d}  {(done - sent) * 1e3:6.0f} ms  {faces}")
            cv2.imwrite(str(out_dir / f"overlay_{i:03d}.png"), image_to_bgr(overlay))
        print(f"overlays in {out_dir}/overlay_*.png")
    finally:
        graph.shutdown()
        feeder.destroy_node()
        rclpy.try_shutdown()
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="face-align-ros", description=__doc__.split("\n\n")[0])
    p.add_argument("--image-topic", default="/camera/image_raw", help="sensor_msgs/Image input topic")
    p.add_argument("--image-transport", choices=("raw", "compressed"),
                   help="compressed: sensor_msgs/CompressedImage on IMAGE_TOPIC/compressed (default: the params' "
                        "image_transport, raw)")
    p.add_argument("--camera-info-topic", default=None,
                   help="sensor_msgs/CameraInfo topic (default: camera_info beside the image topic)")
    p.add_argument("--params", default=_default_params(), help="ROS parameter YAML (default: config/face_alignment.yaml)")
    p.add_argument("--namespace", default="", help="namespace of both nodes")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for services / results")
    p.add_argument("--demo", action="store_true", help="feed the sample stream of a real face and save overlays")
    p.add_argument("--frames", type=int, default=30, help="demo: frames to send")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--out", default="out/ros_demo", help="demo: folder for the overlay PNGs")
    args = p.parse_args(argv)
    from face_alignment_ros.ros.transport_profile import use_shipped_profile

    use_shipped_profile()  # before rclpy.init: Fast DDS reads it when the middleware loads
    return demo(args) if args.demo else run(args)


if __name__ == "__main__":
    sys.exit(main())
