"""trtforge's spine: model I/O, recipe, pipeline and cache, engine builds, validation, reports, CLI.

The Python API twins of the commands::

    from optimizer import optimize, load_recipe
    report = optimize("model.onnx", "out/", load_recipe("recipe.yaml"), calib="calib/", val="val/")

Heavy modules (onnxruntime, TensorRT) are imported only when a function needs them.
"""

from __future__ import annotations

__all__ = ["optimize", "validate_only", "matrix", "export", "load_recipe", "inspect_model", "load_model", "save_model"]


def __getattr__(name: str):
    # Lazy: `import optimizer` (and `trtforge --help`) must not pull in the pipeline's imports.
    if name in ("optimize", "validate_only"):
        from optimizer import pipeline

        return getattr(pipeline, name)
    if name == "matrix":
        from optimizer.matrix_run import matrix

        return matrix
    if name == "export":
        # The module is torch_export: a submodule named `export` would shadow this function once imported.
        from optimizer.torch_export import export

        return export
    if name == "load_recipe":
        from optimizer.recipe import load_recipe

        return load_recipe
    if name == "inspect_model":
        from optimizer.inspect import inspect_model

        return inspect_model
    if name in ("load_model", "save_model"):
        from optimizer import model

        return getattr(model, name)
    raise AttributeError(f"module 'optimizer' has no attribute {name!r}")
