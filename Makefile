# Entry points for developers and CI; each target first brings .venv up to date (seconds when
# nothing changed).
VENV := .venv
PY := $(VENV)/bin/python
# ament_index look-ups (share/ files of ROS packages) search this prefix.
export AMENT_PREFIX_PATH := $(CURDIR)/$(VENV)

.PHONY: setup demo test bench

setup:
	bash scripts/setup_env.sh

# The main job: the one-process ROS graph fed by a sample stream of a real face (overlay PNGs in
# out/ros_demo), after the plain CLI on the same photo (out/demo).
demo: setup
	$(VENV)/bin/face-align --demo --out out/demo
	ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST $(VENV)/bin/face-align-ros --demo --frames 20 --out out/ros_demo

# pytest exit 5 (no tests collected) fails like any other non-zero status.
test: setup
	ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST $(PY) -m pytest -q test; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; fi; exit $$rc

bench: setup
	ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST $(VENV)/bin/face-align-bench
