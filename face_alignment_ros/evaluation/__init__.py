"""evaluation layer of face_alignment_ros (see DESIGN in the README)."""
