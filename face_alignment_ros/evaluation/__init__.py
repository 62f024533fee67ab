"""evaluation floor of face_alignment_ros: data set readers, protocols, peers, benchmarks. Reads
core and common, never training or ros (docs/ARCHITECTURE.md)."""
