"""training floor of face_alignment_ros: the stages from photos to the shipped assets. Reads core
and common, never evaluation or ros (docs/ARCHITECTURE.md)."""
