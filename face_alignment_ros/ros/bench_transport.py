"""Transport benchmark (prints figures; not a test): how many camera frames cross from one process
to another, with and without the shipped Fast DDS profile (config/fastdds.xml) on the
publisher's side.

For each image size, publisher reliability and profile choice, a publisher subprocess sends
``--frames`` rgb8 Images at ``--rate`` Hz; this process subscribes with the node's image QoS
(sensor data, best effort) and counts the distinct frames that arrive. The subscriber uses this
process's own environment (no profile unless you set one). A random ROS domain keeps other
traffic out.

    python -m face_alignment_ros.ros.bench_transport [--sizes 640x480 1280x720] [--frames 60 --rate 30]
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time

from face_alignment_ros.ros.transport_profile import PROFILE_ENV_VARS, profile_environment
from face_alignment_ros.ros.waiting import wait_until

TOPIC = "/bench_transport/image"


def _publish(args) -> int:
    """Child process: wait for the subscriber, publish the frames at the rate, say 'done', then
    stay alive until stdin closes (so the last shared-memory buffers stay readable)."""
    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image

    from face_alignment_ros.ros.qos import image_qos

    width, height = (int(v) for v in args.publish.split("x"))
    rclpy.init(domain_id=args.domain_id)
    node = rclpy.create_node("bench_transport_camera")
    pub = node.create_publisher(Image, TOPIC, image_qos(args.reliability))
    pixels = np.random.default_rng(0).integers(0, 256, height * width * 3, np.uint8).tobytes()
    msg = Image(height=height, width=width, encoding="rgb8", step=width * 3, data=pixels)
    msg.header.frame_id = "camera_optical_frame"
    try:
        wait_until(lambda: pub.get_subscription_count() >= 1, args.match_timeout, what="a subscriber")
    except TimeoutError:
        print("no subscriber", flush=True)
        return 1
    print("matched", flush=True)
    start = time.monotonic()
    for i in range(args.frames):
        delay = start + i / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing to the camera rate
        msg.header.stamp.sec = i
        pub.publish(msg)
    print("done", flush=True)
    sys.stdin.read()
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def publisher_environment(with_profile: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROFILE_ENV_VARS}
    if with_profile:
        profile = profile_environment(env)
        if not profile:
            raise SystemExit("config/fastdds.xml not found")
        env.update(profile)
    return env


class FrameCounter:
    """A subscription (the node's image QoS) counting distinct frame indices."""

    def __init__(self, node):
        from sensor_msgs.msg import Image

        from face_alignment_ros.ros.qos import image_qos

        self.seen: set[int] = set()
        self.cond = threading.Condition()
        node.create_subscription(Image, TOPIC, self._on_image, image_qos("best_effort"))

    def _on_image(self, msg) -> None:
        with self.cond:
            self.seen.add(msg.header.stamp.sec)
            self.cond.notify_all()

    def reset(self) -> None:
        with self.cond:
            self.seen.clear()

    def wait_quiet(self, expected: int, quiet_s: float) -> int:
        """Wait until ``expected`` frames arrived or none arrived for ``quiet_s``; the count."""
        with self.cond:
            while len(self.seen) < expected:
                before = len(self.seen)
                self.cond.wait(quiet_s)
                if len(self.seen) == before:
                    break
            return len(self.seen)


def measure(counter: FrameCounter, size: str, reliability: str, with_profile: bool, frames: int, rate: float,
            domain: int, timeout: float = 30.0) -> int:
    """Frames of ``frames`` that arrived from one publisher subprocess."""
    counter.reset()
    cmd = [sys.executable, "-m", "face_alignment_ros.ros.bench_transport", "--publish", size,
           "--reliability", reliability, "--frames", str(frames),
           "--rate", str(rate), "--domain-id", str(domain), "--match-timeout", str(timeout)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=publisher_environment(with_profile))
    try:
        for line in proc.stdout:
            if line.strip() == "done":
                break
            if line.strip() == "no subscriber":
                raise RuntimeError("the publisher saw no subscriber")
        else:
            raise RuntimeError(f"publisher ended early (status {proc.wait()})")
        return counter.wait_quiet(frames, quiet_s=1.0)
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["640x480", "1280x720"], help="WxH of the rgb8 frames")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--reliability", nargs="+", default=["best_effort", "reliable"], help="publisher QoS")
    p.add_argument("--profile", choices=["both", "without", "with"], default="both",
                   help="the shipped profile on the publisher's side")
    p.add_argument("--domain-id", type=int, default=None, help="default: random in [40, 200]")
    p.add_argument("--publish", help=argparse.SUPPRESS)         # child process mode: WxH
    p.add_argument("--match-timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    if args.publish:
        args.reliability = args.reliability[0]
        return _publish(args)

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    domain = args.domain_id if args.domain_id is not None else random.randint(40, 200)
    profiles = {"both": [False, True], "without": [False], "with": [True]}[args.profile]
    mine = {n: os.environ[n] for n in PROFILE_ENV_VARS if os.environ.get(n)}
    print(f"domain {domain}; subscriber profile: {mine or 'Fast DDS defaults'}; "
          f"{args.frames} frames at {args.rate:g} Hz per row")
    rclpy.init(domain_id=domain)
    node = rclpy.create_node("bench_transport_counter")
    counter = FrameCounter(node)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    print("| frames | publisher QoS | publisher profile | delivered |")
    print("|---|---|---|---|")
    try:
        for size in args.sizes:
            for reliability in args.reliability:
                for with_profile in profiles:
                    n = measure(counter, size, reliability, with_profile, args.frames, args.rate, domain)
                    print(f"| {size} | {reliability} | {'config/fastdds.xml' if with_profile else 'defaults'} "
                          f"| {n} of {args.frames} ({100.0 * n / args.frames:.0f}%) |", flush=True)
    finally:
        executor.shutdown()
        spinner.join(timeout=5.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
