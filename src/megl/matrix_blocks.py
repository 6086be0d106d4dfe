"""The matrix's blocks as the config gives them: read by the config's validation (megl.config) and by
the run enumeration (megl.matrix), which itself reads the config, so they live in neither."""
from __future__ import annotations

from megl.errors import MEGLError
from megl.methods import get_method

BLOCK_KEYS = ("datasets", "backbones", "methods", "mllm_methods")


def blocks(matrix: dict) -> dict[str, dict]:
    """The matrix's blocks by name, each with all four keys (empty lists where absent); a flat
    matrix is the one block `all`."""
    if "blocks" in matrix:
        raw = matrix["blocks"]
    else:
        raw = {"all": {k: matrix[k] for k in BLOCK_KEYS if k in matrix}}
    return {name: {k: list(block.get(k) or []) for k in BLOCK_KEYS} for name, block in raw.items()}


def check_method_kinds(matrix: dict) -> None:
    for name, block in blocks(matrix).items():
        where = f"matrix.blocks.{name}" if "blocks" in matrix else "matrix"
        for key, wants_mllm in (("methods", False), ("mllm_methods", True)):
            for method in block[key]:
                if get_method(method).is_mllm != wants_mllm:
                    other = "methods" if wants_mllm else "mllm_methods"
                    raise MEGLError(f"config key {where}.{key}: method {method!r} is a {get_method(method).kind} "
                                    f"method; list it under {where}.{other}")
