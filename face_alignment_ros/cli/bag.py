"""face-align-bag: rosbag2 in, rosbag2 out, with the node's own pipeline and parameters (the
same results as the live node on the same frames); plus replay and a sample bag.

    face-align-bag IN OUT [--image-topic T] [--params config/face_alignment.yaml] [--storage mcap] [--overwrite]
    face-align-bag replay BAG [--rate 2.0] [--reliable] [--remap /camera/image_raw:=/image]
    face-align-bag sample OUT [--frames 30] [--width 640 --height 480 --fps 15] [--compressed jpeg]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _params_from_yaml(path, node: str) -> dict:
    """The ros__parameters of ``node`` (also matched under a '/**' wildcard) in a ROS params file."""
    if not path:
        return {}
    import yaml

    doc = yaml.safe_load(Path(path).read_text()) or {}
    out = {}
    for key in ("/**", "**", node, f"/{node}"):
        out.update((doc.get(key) or {}).get("ros__parameters", {}) or {})
    return out


def _checked(table, values: dict) -> dict:
    """Defaults of a node's parameter table overridden by ``values``, validated like the node."""
    specs = {p.name: p for p in table}
    out = {p.name: p.default for p in table}
    for name, value in values.items():
        if name not in specs:
            raise SystemExit(f"unknown parameter {name!r}")
        if isinstance(specs[name].default, float) and isinstance(value, int):
            value = float(value)
        reason = specs[name].reason_invalid(value)
        if reason:
            raise SystemExit(f"invalid parameter: {reason}")
        out[name] = value
    return out


def _prepare_output(path: Path, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``; then remove it, but only when it holds
    nothing but bag files (a folder of other things is never deleted)."""
    if not path.exists():
        return
    if not overwrite:
        raise SystemExit(f"output {path} exists; choose another name or pass --overwrite to replace it")
    bag_files = (".mcap", ".db3", ".db3-shm", ".db3-wal", ".yaml")
    if not path.is_dir() or any(not f.is_file() or not f.name.endswith(bag_files) for f in path.iterdir()):
        raise SystemExit(f"--overwrite: {path} is not a bag folder (it holds other files); not removing it")
    import shutil

    shutil.rmtree(path)


class _StopRequest:
    """SIGINT / SIGTERM ask the conversion to stop after the current frame (the bag is then
    closed readable and marked partial); a second signal acts as usual."""

    def __init__(self):
        import signal

        self.signal = None
        self._old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def _on_signal(self, signum, _frame) -> None:
        import signal

        self.signal = signum
        print(f"{signal.Signals(signum).name}: finishing the current frame, then closing the bag as partial",
              file=sys.stderr, flush=True)
        self.restore()

    def __call__(self) -> bool:
        return self.signal is not None

    def restore(self) -> None:
        import signal

        for s, handler in self._old.items():
            signal.signal(s, handler)


def convert(args) -> int:
    from face_alignment_ros.core.descent_model import DescentModel
    from face_alignment_ros.ros import bag_io
    from face_alignment_ros.ros.descent_model_node import PARAMS as MODEL_PARAMS, shipped_model_file
    from face_alignment_ros.ros.face_alignment_node import PARAMS as NODE_PARAMS
    from face_alignment_ros.ros.pipeline import FramePipeline, PipelineConfig
    from face_alignment_ros.ros.face_ids import hri_id

    node = _checked(NODE_PARAMS, _params_from_yaml(args.params, "face_alignment_node"))
    model = _checked(MODEL_PARAMS, _params_from_yaml(args.params, "descent_model_node"))
    _prepare_output(Path(args.output), args.overwrite)
    values = dict(node, debug_image=args.debug_image or node["publish_debug_image"], markers=False)
    pipeline = FramePipeline(PipelineConfig.from_values(values), dff_weights=args.dff_weights or node["dff_weights"],
                             detector=node["detector"], device=node["device"], threads=node["num_threads"])
    descent_path = Path(args.descent_model or model["model_file"] or shipped_model_file(model["descriptor"]))
    import hashlib

    data = descent_path.read_bytes() if descent_path.is_file() else None
    if data is None:
        raise SystemExit(f"descent model file not found: {descent_path}")
    descent = DescentModel.from_bytes(data, source=str(descent_path), expect_descriptor=model["descriptor"])
    pipeline.set_descent_model(descent, hashlib.sha256(data).hexdigest())

    t0 = time.perf_counter()

    def show(t, out):
        faces = ", ".join(f"face_{hri_id(lm.face_id)} conf {lm.confidence:.2f}" for lm in out.landmarks.faces) or "no face"
        print(f"{t / 1e9:.3f}: {faces}", flush=True)

    stop = _StopRequest()
    try:
        counts = bag_io.convert_bag(args.input, args.output, pipeline, args.image_topic, args.storage,
                                    args.copy_input, args.output_ns, on_frame=None if args.quiet else show,
                                    should_stop=stop)
    finally:
        stop.restore()
    dt = time.perf_counter() - t0
    print(f"{counts['frames']} frames ({counts['faces']} faces, {counts['bad']} bad, {counts['errors']} failed) "
          f"from {counts['image_topic']}"
          f"{' with ' + counts['camera_info_topic'] if counts['camera_info_topic'] else ' (no CameraInfo)'}"
          f" -> {args.output} in {dt:.1f} s")
    if counts["partial"]:
        import signal

        print(f"interrupted: {args.output} is readable but PARTIAL (metadata custom_data "
              f"{bag_io.STATUS_KEY}: partial); re-run with --overwrite for the whole bag", file=sys.stderr)
        return 128 + (stop.signal or signal.SIGINT)
    return 0


def replay(args) -> int:
    from face_alignment_ros.ros.transport_profile import use_shipped_profile

    use_shipped_profile()  # the replayer is a camera: big frames need the profile on this side
    import rclpy

    from face_alignment_ros.ros import bag_io

    remap = dict(r.split(":=", 1) for r in args.remap)
    rclpy.init()
    node = rclpy.create_node("face_align_bag_replay")
    try:
        player = bag_io.BagReplayer(node, args.bag, args.topics or None, args.reliable, remap)
        if args.wait_subscribers and not player.wait_for_subscribers(1, args.wait_timeout):
            print(f"no subscriber within {args.wait_timeout} s; publishing anyway", file=sys.stderr)
        for _ in range(args.loop):
            n = player.play(args.rate)
            print(f"published {n} messages from {args.bag} at x{args.rate}")
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def sample(args) -> int:
    from face_alignment_ros.ros import bag_io

    stamps = bag_io.write_sample_bag(args.output, args.frames, args.width, args.height, args.fps, args.face_px,
                                     args.topic, storage=args.storage, compressed=args.compressed)
    topic = f"{args.topic}/compressed" if args.compressed else args.topic
    print(f"wrote {len(stamps)} frames of {args.width}x{args.height} to {args.output} ({topic})")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "replay":
        p = argparse.ArgumentParser(prog="face-align-bag replay",
                                    description="Publish a bag's images and CameraInfo at the recorded rate (x N).")
        p.add_argument("bag")
        p.add_argument("--rate", type=float, default=1.0, help="speed factor (2 = twice as fast)")
        p.add_argument("--topics", nargs="*", help="topics to replay (default: all Image and CameraInfo)")
        p.add_argument("--remap", nargs="*", default=[], metavar="FROM:=TO")
        p.add_argument("--reliable", action="store_true", help="reliable publishers (default: sensor-data QoS)")
        p.add_argument("--loop", type=int, default=1, help="play this many times")
        p.add_argument("--wait-subscribers", action="store_true", help="wait for a subscriber before playing")
        p.add_argument("--wait-timeout", type=float, default=10.0)
        return replay(p.parse_args(argv[1:]))
    if argv and argv[0] == "sample":
        p = argparse.ArgumentParser(prog="face-align-bag sample",
                                    description="Write the sample stream of a real face (astronaut photo) to a bag.")
        p.add_argument("output")
        p.add_argument("--frames", type=int, default=30)
        p.add_argument("--width", type=int, default=640)
        p.add_argument("--height", type=int, default=480)
        p.add_argument("--fps", type=float, default=15.0)
        p.add_argument("--face-px", type=float, default=150.0)
        p.add_argument("--topic", default="/camera/image_raw")
        p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
        p.add_argument("--compressed", choices=("jpeg", "png"), help="CompressedImage on TOPIC/compressed")
        return sample(p.parse_args(argv[1:]))
    p = argparse.ArgumentParser(prog="face-align-bag", description=__doc__.split("\n\n")[0],
                                epilog="Subcommands: 'replay BAG', 'sample OUT' (see --help of each).")
    p.add_argument("input", help="input rosbag2 folder (mcap or sqlite3)")
    p.add_argument("output", help="output rosbag2 folder (must not exist, see --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output bag (e.g. a partial one)")
    p.add_argument("--image-topic", help="sensor_msgs/Image or CompressedImage topic (default: the bag's only one)")
    p.add_argument("--params", help="ROS parameter YAML (config/face_alignment.yaml)")
    p.add_argument("--descent-model", help="descent model file (default: the params' model_file or the shipped one)")
    p.add_argument("--dff-weights", help="DFF weights (default: the params' dff_weights or the shipped one)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--output-ns", default="", help="namespace of the output topics (default: /landmarks, ...)")
    p.add_argument("--copy-input", action="store_true", help="also copy the images and CameraInfo")
    p.add_argument("--debug-image", action="store_true", help="also write the overlay images")
    p.add_argument("--quiet", action="store_true")
    return convert(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
