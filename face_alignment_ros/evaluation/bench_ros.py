"""ROS benchmark (prints figures; not a test): the one-process graph on 640x480 frames of one
face (the sample stream).

1. Latency, image published -> LandmarksArray received, one frame at a time, with the node's
   per-stage means (image conversion, detect+track+align, message building, debug).
2. A stream at --rate Hz for --duration s: frames received / processed / dropped (the node
   keeps only the newest frame), drop rate, and the process RSS at the start and the end.

    python -m face_alignment_ros.evaluation.bench_ros [--rate 30 --duration 60 --latency-frames 20]
"""
from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--latency-frames", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="node num_threads (config/face_alignment.yaml uses 1)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--domain-id", type=int, default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

    import rclpy
    from sensor_msgs.msg import Image

    from face_alignment_ros.msg import LandmarksArray
    from face_alignment_ros.ros.graph import Graph
    from face_alignment_ros.ros.image_conversion import bgr_to_image_fields
    from face_alignment_ros.ros.qos import OUTPUT_QOS, image_qos
    from face_alignment_ros.ros.sample_stream import sample_frames
    from face_alignment_ros.ros.testing import domain_id, model_files, wait_until

    import tempfile

    tmp = tempfile.mkdtemp(prefix="bench_ros_")
    descent, weights, trained = model_files(tmp)
    rclpy.init(domain_id=args.domain_id if args.domain_id is not None else domain_id(3))
    graph = Graph("/bench/image", None, aligner_overrides={"dff_weights": str(weights), "num_threads": args.threads},
                  model_overrides={"model_file": str(descent)})
    node = rclpy.create_node("bench_ros_camera")
    graph.executor.add_node(node)
    received = {}
    cond = threading.Condition()

    def on_landmarks(msg):
        with cond:
            received[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = (time.perf_counter(), len(msg.faces))
            cond.notify_all()

    node.create_subscription(LandmarksArray, "/landmarks", on_landmarks, OUTPUT_QOS)
    pub = node.create_publisher(Image, "/bench/image", image_qos())
    graph.start()
    try:
        assert graph.bring_up(120.0), "descent model node failed to come up"
        wait_until(lambda: graph.aligner.pipeline.ready, 120.0, what="model in the aligner")
        frames = [Image(**bgr_to_image_fields(f, "rgb8")) for f in
                  sample_frames(60, args.width, args.height)]
        seq = [0]

        def send(i):
            msg = frames[i % len(frames)]
            seq[0] += 1
            msg.header.frame_id = "bench_camera"
            msg.header.stamp.sec, msg.header.stamp.nanosec = seq[0], 0
            t = time.perf_counter()
            pub.publish(msg)
            return (seq[0], 0), t

        print(f"face_alignment_ros ROS benchmark: {args.width}x{args.height}, one face, "
              f"{'trained models' if trained else 'UNTRAINED STAND-IN models (timing only)'}, "
              f"{os.cpu_count()} CPUs, node num_threads {args.threads}")
        # 1. latency
        lat = []
        for i in range(args.latency_frames + 3):
            k, t = send(i)
            with cond:
                cond.wait_for(lambda: k in received, timeout=60.0)
            if i >= 3 and k in received:
                lat.append((received[k][0] - t) * 1e3)
        lat = np.array(lat)
        stats = graph.aligner.stats.snapshot()
        print(f"\nlatency image in -> landmarks out over {len(lat)} frames: median {np.median(lat):.1f} ms, "
              f"p95 {np.percentile(lat, 95):.1f} ms, min {lat.min():.1f} ms")
        print("node stages (mean over its last 100 frames):")
        for stage, ms in stats["stages_mean_ms"].items():
            print(f"  {stage:22s} {ms:8.2f} ms")
        print(f"  {'total in worker':22s} {stats['mean_ms']:8.2f} ms")
        # 2. stream
        before = graph.aligner.stats.snapshot()
        rss0 = rss_mb()
        period = 1.0 / args.rate
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < args.duration:
            send(n)
            n += 1
            time.sleep(max(0.0, start + n * period - time.perf_counter()))  # pacing
        wait_until(lambda: graph.aligner._frame is None, 30.0, what="last frame taken")
        time.sleep(1.0)  # let the last frame finish (bench only)
        after = graph.aligner.stats.snapshot()
        rss1 = rss_mb()
        got = after["received"] - before["received"]
        done = after["processed"] - before["processed"]
        dropped = after["dropped"] - before["dropped"]
        print(f"\nstream {args.rate:g} Hz for {args.duration:g} s: sent {n}, received {got}, processed {done} "
              f"({done / args.duration:.1f} fps), dropped {dropped} (drop rate {dropped / max(got, 1):.3f}); "
              f"lost in transport {n - got}")
        print(f"RSS start {rss0:.0f} MB, end {rss1:.0f} MB (growth {rss1 - rss0:+.0f} MB)")
    finally:
        graph.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
