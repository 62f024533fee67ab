"""Pipeline counters and their diagnostic_msgs/DiagnosticArray on /diagnostics."""
from __future__ import annotations

import collections
import statistics
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

WAITING_FOR_MODEL = "waiting for descent model"
FRAMES_LOST = "frames lost before the node"
TRANSPORT_HINT = ("large images need the shared-memory Fast DDS profile config/fastdds.xml on the camera's "
                  "side (docs/ros.md, Robustness)")
NO_CAMERA_INFO = "no valid CameraInfo"


class StampGapCounter:
    """Frames missing from a camera stream with a steady rate, seen as gaps in its header stamps.

    The period is the median of the single-frame intervals (those under 1.5x the 10th
    percentile) of the last ``window`` intervals. The stream counts as steady when 90% of its
    intervals lie within 0.2 periods of a whole number of periods; then an interval of k periods
    (k >= 2) means k - 1 missing frames. A stream without a steady rate (frames sent on demand)
    counts nothing; a stamp going back, or a pause over ``max_gap`` periods, starts afresh."""

    def __init__(self, window: int = 30, min_intervals: int = 8, max_gap: float = 50.0):
        self._intervals = collections.deque(maxlen=window)
        self._last: float | None = None
        self._min_intervals, self._max_gap = min_intervals, max_gap

    def add(self, stamp_s: float) -> int:
        """Record the stamp of one received frame; returns the frames missing just before it."""
        last, self._last = self._last, stamp_s
        if last is None:
            return 0
        dt = stamp_s - last
        period = self.period()
        if dt <= 0 or (period and dt > self._max_gap * period):
            self._intervals.clear()
            return 0
        self._intervals.append(dt)
        if not period:
            return 0
        k = round(dt / period)
        return k - 1 if k >= 2 and abs(dt / period - k) < 0.2 else 0

    def period(self) -> float | None:
        """The steady period in seconds, or None while unknown or unsteady."""
        if len(self._intervals) < self._min_intervals:
            return None
        ordered = sorted(self._intervals)
        low = ordered[len(ordered) // 10]
        period = statistics.median(p for p in ordered if p < 1.5 * low)
        whole = sum(abs(p / period - round(p / period)) < 0.2 for p in ordered)
        return period if whole >= 0.9 * len(ordered) else None


class PipelineStats:
    """Thread-safe counters shared by the subscription callbacks and the worker: write them only
    through the methods, which hold the lock (``snapshot`` reads them under it)."""

    def __init__(self, window: int = 100):
        self._lock = threading.Lock()
        self.received = 0           # image messages that reached the node
        self.processed = 0          # frames aligned and published
        self.dropped = 0            # replaced by a newer frame before the worker took them
        self.bad = 0                # rejected frames (encoding, size, step, data length)
        self.errors = 0             # frames whose processing raised
        self.without_model = 0      # frames that arrived before any descent model
        self.lost_transport = 0     # reported lost by the middleware (message-lost QoS event)
        self.lost_stamps = 0        # missing from a steady camera rate (StampGapCounter)
        self.last_loss_time = 0.0
        self.callback_errors = 0    # exceptions caught in executor callbacks or the worker loop
        self.camera_info = ""       # what the intrinsics came from, in words
        self.camera_info_valid = True
        self.faces = 0              # faces in the last processed frame
        self.model_updates = 0
        self.model_sha256 = ""
        self.model_error = ""
        self.last_error = ""
        self.last_error_time = 0.0
        self.times_ms = collections.deque(maxlen=window)
        self.stage_ms: dict[str, collections.deque] = {}

    def add(self, **counts) -> None:
        with self._lock:
            for key, n in counts.items():
                setattr(self, key, getattr(self, key) + n)

    def error(self, text: str, bad: bool = False) -> None:
        with self._lock:
            if bad:
                self.bad += 1
            else:
                self.errors += 1
            self.last_error, self.last_error_time = text, time.monotonic()

    def lost(self, transport: int = 0, stamps: int = 0) -> None:
        if transport or stamps:
            with self._lock:
                self.lost_transport += transport
                self.lost_stamps += stamps
                self.last_loss_time = time.monotonic()

    def callback_error(self, text: str) -> None:
        with self._lock:
            self.callback_errors += 1
            self.last_error, self.last_error_time = text, time.monotonic()

    def model_rejected(self, text: str) -> None:
        with self._lock:
            self.model_error = text

    def model_in_use(self, sha256: str) -> None:
        with self._lock:
            self.model_updates += 1
            self.model_sha256, self.model_error = sha256, ""

    def camera_info_status(self, text: str, valid: bool) -> None:
        with self._lock:
            self.camera_info, self.camera_info_valid = text, valid

    def clear_times(self) -> None:
        """Forget the processing times (a benchmark between two runs)."""
        with self._lock:
            self.times_ms.clear()
            for times in self.stage_ms.values():
                times.clear()

    def frame_done(self, faces: int, total_ms: float, stages: dict) -> None:
        with self._lock:
            self.processed += 1
            self.faces = faces
            self.times_ms.append(total_ms)
            for k, v in stages.items():
                self.stage_ms.setdefault(k, collections.deque(maxlen=self.times_ms.maxlen)).append(v)

    def snapshot(self) -> dict:
        with self._lock:
            times = list(self.times_ms)
            d = {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in ("times_ms", "stage_ms")}
            d["mean_ms"] = sum(times) / len(times) if times else 0.0
            d["max_ms"] = max(times) if times else 0.0
            d["stages_mean_ms"] = {k: sum(v) / len(v) for k, v in self.stage_ms.items() if v}
            seen = self.processed + self.dropped
            d["drop_rate"] = self.dropped / seen if seen else 0.0
            return d


def diagnostic_array(stamp, node_name: str, stats: PipelineStats, model_ready: bool,
                     recent_error_s: float = 5.0) -> DiagnosticArray:
    s = stats.snapshot()
    now = time.monotonic()
    recent = s["last_error"] and now - s["last_error_time"] < recent_error_s
    losing = s["last_loss_time"] and now - s["last_loss_time"] < recent_error_s
    warnings = []  # every current problem, most important first
    if not model_ready:
        warnings.append(WAITING_FOR_MODEL + (f" (last model rejected: {s['model_error']})" if s["model_error"] else ""))
    if recent:
        warnings.append(f"recent error: {s['last_error']}")
    if losing:
        warnings.append(f"{FRAMES_LOST}: {s['lost_transport']} in transport, {s['lost_stamps']} by stamp gaps; "
                        f"{TRANSPORT_HINT}")
    if not s["camera_info_valid"]:
        warnings.append(s["camera_info"])
    if warnings:
        level, message = DiagnosticStatus.WARN, "; ".join(warnings)
    else:
        level, message = DiagnosticStatus.OK, f"{s['faces']} face(s), {s['mean_ms']:.1f} ms/frame"
    values = {
        "frames received": s["received"], "frames processed": s["processed"], "frames dropped": s["dropped"],
        "drop rate": f"{s['drop_rate']:.4f}", "frames lost in transport": s["lost_transport"],
        "frames missing by stamp gaps": s["lost_stamps"], "bad frames": s["bad"], "processing errors": s["errors"],
        "callback errors": s["callback_errors"], "camera info": s["camera_info"],
        "frames before model": s["without_model"], "face count": s["faces"],
        "processing time mean ms": f"{s['mean_ms']:.2f}", "processing time max ms": f"{s['max_ms']:.2f}",
        "descent model sha256": s["model_sha256"], "descent model updates": s["model_updates"],
        "last model rejected": s["model_error"],
        "last error": s["last_error"],
    }
    for stage, ms in s["stages_mean_ms"].items():
        values[f"stage {stage} mean ms"] = f"{ms:.2f}"
    status = DiagnosticStatus(level=level, name=f"{node_name}: face alignment", message=message,
                              hardware_id=node_name,
                              values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])
    out = DiagnosticArray(status=[status])
    out.header.stamp = stamp
    return out


def values_of(status: DiagnosticStatus) -> dict:
    """KeyValue list -> dict (for consumers and tests)."""
    return {kv.key: kv.value for kv in status.values}
