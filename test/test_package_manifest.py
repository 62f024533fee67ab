"""package.xml declares every library the installed code imports: in a colcon workspace an
undeclared one is a ModuleNotFoundError at run time (it was transforms3d)."""
import ast
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# import name -> rosdep key where they differ (rosdep/python.yaml of ros/rosdistro)
ROSDEP_KEYS = {
    "cv2": "python3-opencv", "numpy": "python3-numpy", "scipy": "python3-scipy", "torch": "python3-torch",
    "transforms3d": "python3-transforms3d", "numba": "python3-numba", "skimage": "python3-skimage",
    "tqdm": "python3-tqdm", "yaml": "python3-yaml", "matplotlib": "python3-matplotlib",
    "mediapipe": "python3-mediapipe-pip", "rosbags": "python3-rosbags-pip", "tf2_ros": "tf2_ros_py",
    "onnxruntime": "python3-onnxruntime-pip",
}
# imported only where installed, each behind a clear message
OPTIONAL = {"dlib": "evaluation peer and optional detector (requirements-eval.txt)",
            "onnx": "ONNX export only (requirements-export.txt)",
            "openvino": "runtime comparison in bench_dff only (requirements-eval.txt)",
            "ai_edge_litert": "fast detector runtime; without it the detector runs MediaPipe's graphs"}


def _imported_top_level_modules() -> dict[str, str]:
    """Top-level module -> one file importing it, over the installed package's sources."""
    found = {}
    for path in sorted((ROOT / "face_alignment_ros").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def _run_dependencies() -> set[str]:
    manifest = ET.parse(ROOT / "package.xml").getroot()
    return {e.text.strip() for tag in ("depend", "exec_depend") for e in manifest.iter(tag)}


def test_every_imported_library_is_a_declared_run_dependency():
    declared = _run_dependencies()
    missing = []
    for module, where in _imported_top_level_modules().items():
        if module in sys.stdlib_module_names or module == "face_alignment_ros" or module in OPTIONAL:
            continue
        key = ROSDEP_KEYS.get(module, module)
        if key not in declared:
            missing.append(f"{module} (imported by {where}): add <exec_depend>{key}</exec_depend>")
    assert not missing, "package.xml lacks run dependencies:\n" + "\n".join(missing)
