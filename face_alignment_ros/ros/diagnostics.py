"""Pipeline counters and their diagnostic_msgs/DiagnosticArray on /diagnostics."""
from __future__ import annotations

import collections
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

WAITING_FOR_MODEL = "waiting for descent model"


class PipelineStats:
    """Thread-safe counters shared by the subscription callbacks and the worker."""

    def __init__(self, window: int = 100):
        self._lock = threading.Lock()
        self.received = 0           # image messages that reached the node
        self.processed = 0          # frames aligned and published
        self.dropped = 0            # replaced by a newer frame before the worker took them
        self.bad = 0                # rejected frames (encoding, size, step, data length)
        self.errors = 0             # frames whose processing raised
        self.without_model = 0      # frames that arrived before any descent model
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
    recent = s["last_error"] and time.monotonic() - s["last_error_time"] < recent_error_s
    if not model_ready:
        level, message = DiagnosticStatus.WARN, WAITING_FOR_MODEL
        if s["model_error"]:
            message += f" (last model rejected: {s['model_error']})"
    elif recent:
        level, message = DiagnosticStatus.WARN, f"frame rejected: {s['last_error']}"
    else:
        level, message = DiagnosticStatus.OK, f"{s['faces']} face(s), {s['mean_ms']:.1f} ms/frame"
    values = {
        "frames received": s["received"], "frames processed": s["processed"], "frames dropped": s["dropped"],
        "drop rate": f"{s['drop_rate']:.4f}", "bad frames": s["bad"], "processing errors": s["errors"],
        "frames before model": s["without_model"], "face count": s["faces"],
        "processing time mean ms": f"{s['mean_ms']:.2f}", "processing time max ms": f"{s['max_ms']:.2f}",
        "descent model sha256": s["model_sha256"], "descent model updates": s["model_updates"],
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
