"""Keeps triton out of the napari process.

torchvision and timm import `torch._dynamo`, which imports triton when it is installed (it comes with
CUDA builds of torch). Loading triton's bundled LLVM after an OpenGL context of Mesa's llvmpipe exists
(software rendering: Xvfb, VMs, remote desktops) crashes the process with a segmentation fault. napari
has its OpenGL context before any plugin widget loads, and this plugin never compiles with triton, so
the widget makes `import triton` fail, as on a CPU-only torch install, where torch handles it. Set
ECLIPSE_NAPARI_ALLOW_TRITON=1 to keep triton importable (e.g. when another plugin compiles on a GPU).
"""

import importlib.abc
import os
import sys


class _NoTriton(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ModuleNotFoundError(f"No module named {name!r} (kept out by eclipse_napari.gl_safety)", name=name)
        return None


def keep_triton_out() -> bool:
    """Blocks later imports of triton unless it is loaded already or allowed; returns whether it blocked."""
    if os.environ.get("ECLIPSE_NAPARI_ALLOW_TRITON") == "1" or "triton" in sys.modules:
        return False
    if not any(isinstance(f, _NoTriton) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoTriton())
    return True
