"""TensorRT engine builds: one code path for datacenter TensorRT and TensorRT-RTX.

TensorRT itself is imported only when a function here needs it, so importing this package
costs nothing on machines without it.

- ``loader``: which builder module to use, its shared logger, its capabilities
- ``shapes``: optimization profiles (``--shapes``) and their checks against the network
- ``parse``: ONNX -> network, and the parse check ``inspect`` reports
- ``precision``: which precisions the parsed network carries (INT8 via Q/DQ, FP16 via casts)
- ``build``: config -> engine file + ``<engine>.json`` sidecar + timing cache, all atomic
- ``store``: content-addressed engine store (build once per model/config/TensorRT/target)
- ``sidecar``: does an engine fit this machine (TensorRT flavour/version, compute capability)
- ``cuda``: is there a GPU, and which compute capability (asked of the driver)
- ``runtime``: run an engine where a GPU exists (``TensorRTRunner``)
"""

from optimizer.engine.build import BuildConfig, BuildResult, build_engine
from optimizer.engine.loader import available_builders, load_tensorrt
from optimizer.engine.parse import ParseCheck, ParseIssue, parse_check
from optimizer.engine.precision import LayerPrecisionSummary, network_precision
from optimizer.engine.shapes import ShapeProfile, parse_shapes
from optimizer.engine.sidecar import check_sidecar, read_sidecar, require_compatible
from optimizer.engine.store import EngineStore, build_or_reuse, timing_cache_path

__all__ = [
    "BuildConfig",
    "BuildResult",
    "EngineStore",
    "LayerPrecisionSummary",
    "ParseCheck",
    "ParseIssue",
    "ShapeProfile",
    "available_builders",
    "build_engine",
    "build_or_reuse",
    "check_sidecar",
    "load_tensorrt",
    "network_precision",
    "parse_check",
    "parse_shapes",
    "read_sidecar",
    "require_compatible",
    "timing_cache_path",
]
