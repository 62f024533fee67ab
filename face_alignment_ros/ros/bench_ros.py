"""ROS benchmark (prints figures; not a test): the one-process graph (``face_alignment_node`` +
``descent_model_node``) in this process, a camera in another process publishing 640x480 frames
of 1, 2 and 3 faces (the sample stream) at --rate Hz, as a robot's camera driver would.

Per face count: frames sent, processed per second, dropped by the node (it keeps only the
newest frame), latency image sent -> LandmarksArray received (p50, p95; the camera process
stamps each frame with its wall-clock send time and receives the landmarks), and the node's
per-stage means. At the end: the peak RSS of this process, i.e. of the node and its models
(VmHWM: the camera's memory is its own).

    python -m face_alignment_ros.ros.bench_ros [--faces 1 2 3 --rate 30 --duration 20]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import time

import numpy as np

from face_alignment_ros.common.process_memory import current_rss_mb, peak_rss_mb


def _camera(domain: int, faces: int, rate: float, duration: float, width: int, height: int, queue) -> None:
    """Child process: publish the stream, receive the landmarks, report latencies."""
    try:
        import rclpy
        from sensor_msgs.msg import Image

        from face_alignment_ros.common.samples import sample_frames
        from face_alignment_ros.msg import LandmarksArray
        from face_alignment_ros.ros.image_conversion import bgr_to_image_fields
        from face_alignment_ros.ros.qos import OUTPUT_QOS, image_qos
        from face_alignment_ros.ros.waiting import wait_until

        rclpy.init(domain_id=domain)
        node = rclpy.create_node("bench_ros_camera")
        frames = [Image(**bgr_to_image_fields(f, "rgb8")) for f in sample_frames(60, width, height, faces=faces)]
        got: dict[tuple, tuple] = {}

        def on_landmarks(msg):
            got[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = (time.time(), len(msg.faces))

        sub = node.create_subscription(LandmarksArray, "/landmarks", on_landmarks, OUTPUT_QOS)
        pub = node.create_publisher(Image, "/bench/image", image_qos())
        executor = rclpy.executors.SingleThreadedExecutor()
        executor.add_node(node)
        import threading

        threading.Thread(target=executor.spin, daemon=True).start()
        wait_until(lambda: pub.get_subscription_count() > 0 and sub.get_publisher_count() > 0, 60.0,
                   what="the node's image subscription and landmarks publisher, matched")

        def send(i) -> tuple:
            msg = frames[i % len(frames)]
            msg.header.frame_id = "bench_camera"
            t = time.time()
            msg.header.stamp.sec, msg.header.stamp.nanosec = int(t), int((t - int(t)) * 1e9)
            pub.publish(msg)
            return (msg.header.stamp.sec, msg.header.stamp.nanosec), t

        # warm-up: one frame at a time until 10 have come back (the first ones may be sent
        # before discovery has matched both ways), so that the faces are found and tracked
        deadline = time.monotonic() + 120.0
        i = 0
        while len(got) < 10:
            if time.monotonic() > deadline:
                raise TimeoutError("no landmarks came back during the warm-up")
            key, _ = send(i)
            i += 1
            end = time.monotonic() + 2.0
            while key not in got and time.monotonic() < end:
                time.sleep(0.005)
        got.clear()
        sent = {}
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < duration:
            key, t = send(n)
            sent[key] = t
            n += 1
            time.sleep(max(0.0, start + n / rate - time.perf_counter()))
        time.sleep(1.0)  # frames still in the node
        lat = [(got[k][0] - t) * 1e3 for k, t in sent.items() if k in got]
        nfaces = [got[k][1] for k in sent if k in got]
        queue.put({"sent": n, "received": len(lat), "latency_ms": lat, "faces_seen": nfaces})
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    except Exception as exc:  # reported to the parent, which prints it
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--faces", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of stream per face count")
    p.add_argument("--threads", type=int, default=0, help="node num_threads (0: the thread policy's default)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--domain-id", type=int, default=None, help="default: random in [40, 200]")
    p.add_argument("--flip-average", action="store_true", help="node flip_average: the mirrored crop aligned too")
    p.add_argument("--second-pass", action="store_true",
                   help="node second_pass: detected faces aligned again from their own landmark box")
    p.add_argument("--dff-weights", default=None,
                   help="DFF weights file (its inference graph beside it; default: the shipped ones)")
    args = p.parse_args(argv)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from face_alignment_ros.ros.transport_profile import use_shipped_profile

    use_shipped_profile()  # the camera process inherits it, as a robot's camera driver should have it

    import tempfile

    import rclpy

    from face_alignment_ros.common.stand_in_models import trained_or_stand_in_files
    from face_alignment_ros.ros.graph import Graph
    from face_alignment_ros.ros.waiting import wait_until

    tmp = tempfile.mkdtemp(prefix="bench_ros_")
    descent, weights, trained = trained_or_stand_in_files(tmp)
    weights = args.dff_weights or weights
    domain = args.domain_id if args.domain_id is not None else random.randint(40, 200)
    rclpy.init(domain_id=domain)
    graph = Graph("/bench/image", None, aligner_overrides={"dff_weights": str(weights), "num_threads": args.threads,
                                                            "flip_average": args.flip_average,
                                                            "second_pass": args.second_pass},
                  model_overrides={"model_file": str(descent)})
    graph.start()
    rows = []
    try:
        assert graph.bring_up(120.0), "descent model node failed to come up"
        wait_until(lambda: graph.aligner.pipeline.ready, 120.0, what="model in the aligner")
        runtime = getattr(graph.aligner.pipeline.aligner.backend, "extractor", None)
        print(f"face_alignment_ros ROS benchmark: {args.width}x{args.height}, camera in another process at "
              f"{args.rate:g} Hz, {args.duration:g} s per face count, "
              f"{'trained models' if trained else 'UNTRAINED STAND-IN models (timing only)'}, {os.cpu_count()} CPUs, "
              f"node num_threads {args.threads} (policy: {graph.aligner.pipeline.threads}), "
              f"{'flip_average, ' if args.flip_average else ''}{'second_pass, ' if args.second_pass else ''}"
              f"network runtime {getattr(runtime, 'runtime', '?')}", flush=True)
        ctx = mp.get_context("spawn")
        for faces in args.faces:
            graph.aligner.stats.clear_times()
            before = graph.aligner.stats.snapshot()
            q = ctx.Queue()
            cam = ctx.Process(target=_camera, args=(domain, faces, args.rate, args.duration, args.width,
                                                    args.height, q))
            cam.start()
            res = q.get()
            cam.join()
            after = graph.aligner.stats.snapshot()
            if "error" in res:
                print(f"{faces} face(s): camera failed: {res['error']}; node: received "
                      f"{after['received'] - before['received']}, "
                      f"processed {after['processed'] - before['processed']}, "
                      f"errors {after.get('errors')}, last error {after.get('last_error')!r}")
                continue
            lat = np.asarray(res["latency_ms"]) if res["latency_ms"] else np.array([np.nan])
            row = {"faces": faces, "sent": res["sent"], "processed_fps": res["received"] / args.duration,
                   "dropped": after["dropped"] - before["dropped"],
                   "received": after["received"] - before["received"],
                   "p50_ms": float(np.median(lat)), "p95_ms": float(np.percentile(lat, 95)),
                   "faces_seen": float(np.mean(res["faces_seen"])) if res["faces_seen"] else 0.0,
                   "stages": after["stages_mean_ms"], "worker_ms": after["mean_ms"]}
            rows.append(row)
            print(f"{faces} face(s): done, {row['processed_fps']:.1f} fps", flush=True)
        print("\n| faces | sent | received by the node | processed fps | dropped by the node (newer frame came) "
              "| latency p50 ms | latency p95 ms | faces per output | worker ms/frame |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['faces']} | {r['sent']} | {r['received']} | {r['processed_fps']:.1f} | {r['dropped']} | "
                  f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['faces_seen']:.2f} | {r['worker_ms']:.1f} |")
        print("\nnode stages, mean ms over its last 100 frames:")
        stages = sorted({s for r in rows for s in r["stages"]})
        print("| stage | " + " | ".join(f"{r['faces']} face(s)" for r in rows) + " |")
        print("|---|" + "---:|" * len(rows))
        for s in stages:
            print(f"| {s} | " + " | ".join(f"{r['stages'].get(s, float('nan')):.2f}" for r in rows) + " |")
        print(f"\npeak RSS of the node process {peak_rss_mb():.0f} MB (now {current_rss_mb():.0f} MB)")
    finally:
        graph.shutdown()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
