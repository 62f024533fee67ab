"""Face ids. The tracker numbers its tracks, but restarts its count when it is rebuilt (a new
descent model of another kind, a new pipeline); ``FaceIds`` turns them into integers unique for
the process lifetime and stable while a face is tracked, which ``Landmarks.face_id`` and
``FaceMesh.face_id`` carry. ``hri_id`` spells such an integer as the 5 lowercase letters that
ROS4HRI uses (hri_face_detect's ids look alike): the ``<id>`` of ``/humans/faces/<id>/...`` and
of the TF frames ``face_<id>`` and ``gaze_<id>``.
"""
from __future__ import annotations

import itertools

_ID_LETTERS = 5
_ID_SPACE = 26 ** _ID_LETTERS
# Coprime with 26, so n -> n * stride + offset is a permutation of [0, 26^5): successive faces
# get unlike ids, and the first 11.8 million faces of a process all differ.
_ID_STRIDE = 7_368_787
_ID_OFFSET = 4_122_519


def hri_id(face_id: int) -> str:
    """The ROS4HRI id of our integer face id: 5 lowercase letters."""
    n = (int(face_id) * _ID_STRIDE + _ID_OFFSET) % _ID_SPACE
    letters = []
    for _ in range(_ID_LETTERS):
        n, r = divmod(n, 26)
        letters.append(chr(ord("a") + r))
    return "".join(letters)


class FaceIds:
    """Tracker ids -> face ids unique for the process lifetime, stable while tracked."""

    _serial = itertools.count()  # process-wide: a new pipeline never repeats an id

    def __init__(self):
        self._tracker = None
        self._ids: dict[int, int] = {}

    def assign(self, tracker, tracker_ids: list[int]) -> list[int]:
        """The face ids of this frame's tracks. A new ``tracker`` object starts a fresh mapping
        (its count restarts); ids of tracks no longer present are forgotten."""
        if tracker is not self._tracker:
            self._tracker, self._ids = tracker, {}
        self._ids = {t: self._ids[t] if t in self._ids else next(self._serial) for t in tracker_ids}
        return [self._ids[t] for t in tracker_ids]
