"""Run a saved Core AI ``.aimodel`` with coreai-core's runtime (the bundled CPU runtime on Linux, Core AI on
macOS 27), behind the same ``predict(inputs, state=None)`` / ``make_state()`` interface as Core ML's ``MLModel``."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..layouts.contracts import length_function

METHOD = "coreai-runtime"
EXTRA_HINT = 'pip install "wconv[coreai]"'
SUMMARY_DTYPES = {"Float32": "float32", "Float16": "float16", "Int32": "int32"}


def require_coreai(what: str = "--layout coreai") -> None:
    """Fail in one line when the optional Core AI packages are not installed."""
    try:
        import coreai.runtime  # noqa: F401
        import coreai_torch  # noqa: F401
    except ImportError as e:
        raise InputError(f"{what} needs Apple's Core AI packages ({e.name} is missing): {EXTRA_HINT}") from None


def function_for(names: list[str], inputs: dict) -> str:
    """``main``, or for an encoder with enumerated lengths the function of the input's length."""
    if "main" in names:
        return "main"
    frames = next(iter(inputs.values())).shape[-1]
    wanted = length_function(frames)
    if wanted not in names:
        raise InputError(f"no function for {frames} frames in this .aimodel: it has {', '.join(sorted(names))}")
    return wanted


class AIModelRunner:
    """A loaded ``.aimodel``: each call runs the function the inputs' shape selects; states live in numpy arrays."""

    def __init__(self, path: Path):
        from coreai.authoring import AIModelAsset

        require_coreai(f"running {Path(path).name}")
        if not AIModelAsset.is_valid(path):
            raise InputError(f"{path} is not a Core AI model asset: give a .aimodel converted with `wconv run --layout coreai`")
        self.asset = AIModelAsset.load(path)
        self.loop = asyncio.new_event_loop()
        self.context = self.asset.executable()
        self.model = self.loop.run_until_complete(self.context.__aenter__())
        self.functions: dict = {}

    def function(self, name: str):
        if name not in self.functions:
            self.functions[name] = self.model.load_function(name)
        return self.functions[name]

    def make_state(self) -> dict:
        """Zeroed state arrays, one per state of the model (the stateful decoder's key/value caches)."""
        from coreai.runtime import NDArray

        desc = self.function(function_for(self.model.function_names, {"": np.zeros(0)})).desc
        return {name: NDArray(np.zeros(desc.state_descriptor(name).shape, dtype=desc.state_descriptor(name).dtype))
                for name in desc.state_names}

    def predict(self, inputs: dict, state: dict | None = None) -> dict:
        from coreai.runtime import NDArray

        function = self.function(function_for(self.model.function_names, inputs))
        wanted = function.desc.input_descriptor  # the host's arrays in the model's dtypes (an fp32 model fed fp16 caches)
        feed = {name: NDArray(np.ascontiguousarray(value, dtype=wanted(name).dtype)) for name, value in inputs.items()}
        outputs = self.loop.run_until_complete(function(feed, state=state or {}))
        return {name: np.array(value.numpy()) for name, value in outputs.items()}

    def close(self) -> None:
        self.loop.run_until_complete(self.context.__aexit__(None, None, None))
        self.loop.close()


def asset_metadata(path: Path) -> dict[str, str]:
    """The custom metadata a saved ``.aimodel`` carries (wconv's ``wconv.*`` keys)."""
    from coreai.authoring import AIModelAsset

    return dict(AIModelAsset.load(path).metadata.creator_defined_metadata)


def describe_aimodel(path: Path) -> dict:
    """Names, shapes and dtypes of a saved ``.aimodel``'s inputs, outputs and states, as :func:`wconv.manifest.describe_io`
    describes an ``.mlpackage``, and its ``functions``: ``main``, or one per enumerated length (the largest described)."""
    from coreai.authoring import AIModelAsset

    summary = AIModelAsset.load(path).summary(include_statistics=False)
    functions = sorted(summary.function_names, key=lambda name: int(name.rpartition("_")[2]) if name != "main" else 0)

    def features(entries) -> list[dict]:
        described = []
        for name, text in entries:
            dtype, dims = re.fullmatch(r"NDArray \((\w+), (.*)\)", text).groups()
            described.append({"name": name, "shape": [int(d) for d in dims.split(" × ")], "dtype": SUMMARY_DTYPES.get(dtype, dtype.lower())})
        return described

    return {"inputs": features(summary.function_inputs(functions[-1])), "outputs": features(summary.function_outputs(functions[-1])),
            "states": features(summary.function_states(functions[-1])), "functions": functions}
