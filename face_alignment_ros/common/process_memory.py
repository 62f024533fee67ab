"""Resident memory of this process, for the benchmarks' figures (Linux /proc, else getrusage)."""
from __future__ import annotations


def _status_mb(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (e.g. VmRSS, VmHWM) in MB; None where unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB. Linux: VmHWM of /proc/self/status, which
    belongs to the process's own address space; ``getrusage``'s ru_maxrss is kept across
    fork + exec, so a spawned child would report its parent's peak when that is larger."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """Resident memory of this process now, in MB (NaN where /proc is unavailable)."""
    now = _status_mb("VmRSS")
    return float("nan") if now is None else now
