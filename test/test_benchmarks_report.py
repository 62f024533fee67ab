"""BENCHMARKS.md regeneration keeps the sections that other commands measured (ROS graph,
transport between processes) and nothing else of the old file."""
from face_alignment_ros.evaluation.report import KEPT_SECTIONS, kept_sections


def test_kept_sections_are_the_hand_measured_ones_only(tmp_path):
    old = tmp_path / "BENCHMARKS.md"
    old.write_text("# Benchmarks\n\n## Speed and memory\n\nold speed table\n\n"
                   f"{KEPT_SECTIONS[0]} (1, 2 and 3 faces)\n\nros table\n\n"
                   f"{KEPT_SECTIONS[1]} (Fast DDS transport)\n\ntransport table\n\n"
                   "## Regenerate\n\nold command\n")
    kept = "\n".join(kept_sections(old))
    assert "ros table" in kept and "transport table" in kept
    assert "old speed table" not in kept and "old command" not in kept
    assert kept_sections(tmp_path / "missing.md") == []
