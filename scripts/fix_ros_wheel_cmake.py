"""Point the ROS wheels' *.cmake files at this interpreter's headers.

The ros-* wheels hard-code their build machine's paths (/opt/python/cp3XX-cp3XX/...) for the
Python and numpy include directories; cmake builds of interfaces fail on them. Idempotent.
Usage: python fix_ros_wheel_cmake.py PREFIX   (PREFIX = the venv holding the wheels)
"""
import pathlib
import re
import sys
import sysconfig

import numpy

PY = r"/opt/python/cp3\d+-cp3\d+t?"
RULES = [  # numpy first: its path starts with the interpreter prefix
    (re.compile(PY + r"/lib/python3\.\d+t?/site-packages/numpy/_core/include"), numpy.get_include()),
    (re.compile(PY + r"/include/python3\.\d+t?"), sysconfig.get_paths()["include"]),
]


def main(prefix):
    changed = 0
    for path in pathlib.Path(prefix, "share").rglob("*.cmake"):
        text = path.read_text()
        if "/opt/python/" not in text:
            continue
        new = text
        for pattern, repl in RULES:
            new = pattern.sub(lambda _m, r=repl: r, new)
        if new != text:
            path.write_text(new)
            changed += 1
    print(f"fixed interpreter paths in {changed} cmake files under {prefix}/share")


if __name__ == "__main__":
    main(sys.argv[1])
