"""``--compress SPEC``: parse and validate the compression spec of a conversion.

| SPEC | method | coremltools | minimum target |
|---|---|---|---|
| ``int8`` | linear symmetric int8, per output channel | ``linear_quantize_weights`` | iOS16 |
| ``int4`` | linear symmetric int4, per block of 32 input channels | ``linear_quantize_weights`` | iOS18 |
| ``palette8|6|4|2`` | k-means LUT per tensor | ``palettize_weights`` | iOS16 |
| ``palette3`` | k-means LUT per tensor, 3-bit | ``palettize_weights`` | iOS18 |
| ``palette4g16`` | k-means LUT per group of 16 output channels | ``palettize_weights`` | iOS18 |
| ``mixed:BITS`` | per-layer palette widths searched for an average of BITS bits | ``palettize_weights`` | iOS16, iOS18 if 3-bit |
| ``recipe.json`` | a saved mixed-bit recipe | ``palettize_weights`` | iOS16, iOS18 if 3-bit or grouped |
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

PALETTE_BITS = (8, 6, 4, 3, 2)
IOS16_PALETTE_BITS = (1, 2, 4, 6, 8)  # per-tensor LUT sizes Core ML accepts before iOS 18
GROUP_SIZES = (4, 8, 16, 32, 64, 128, 256)
INT4_BLOCK_SIZE = 32
MIXED_RANGE = (1.0, 8.0)
CHOICES = "choose int8, int4, palette8|6|4|3|2[gN], mixed:BITS (1-8) or a recipe .json"


@dataclass(frozen=True)
class CompressionSpec:
    """One parsed ``--compress`` value. ``bits`` is a float for ``mixed`` (the average), else an int."""

    text: str
    method: str  # "int8", "int4", "palette", "mixed" or "recipe"
    bits: float | int | None = None
    group_size: int | None = None
    recipe_path: Path | None = None

    @property
    def min_target(self) -> str:
        """The coremltools target name this spec needs at least ("iOS16" or "iOS18").

        For a recipe it depends on its contents: see :func:`recipe_min_target`.
        """
        if self.method == "int4" or self.group_size is not None:
            return "iOS18"
        if self.method == "palette" and self.bits not in IOS16_PALETTE_BITS:
            return "iOS18"
        if self.method == "recipe" and self.recipe_path is not None:
            return recipe_min_target(self.recipe_path)
        return "iOS16"

    @property
    def is_palette(self) -> bool:
        return self.method in ("palette", "mixed", "recipe")


def _error(text: str, why: str = CHOICES):
    return InputError(f"--compress '{text}': {why}")


def parse_spec(text: str) -> CompressionSpec:
    """``--compress`` text -> :class:`CompressionSpec`; :class:`~wconv.errors.InputError` for anything else."""
    raw = str(text).strip()
    lowered = raw.lower()
    if lowered in ("int8", "int4"):
        return CompressionSpec(text=raw, method=lowered, bits=int(lowered[3:]))
    match = re.fullmatch(r"palette(\d+)(?:g(\d+))?", lowered)
    if match:
        bits = int(match.group(1))
        if bits not in PALETTE_BITS:
            raise _error(raw)
        group = int(match.group(2)) if match.group(2) else None
        if group is not None and group not in GROUP_SIZES:
            raise _error(raw, f"group size {group} is not one of {', '.join(map(str, GROUP_SIZES))}")
        return CompressionSpec(text=raw, method="palette", bits=bits, group_size=group)
    if lowered.startswith("mixed:"):
        value = lowered.removeprefix("mixed:")
        try:
            bits = float(value)
        except ValueError:
            raise _error(raw, f"'{value}' is not a number of bits; {CHOICES}") from None
        if not MIXED_RANGE[0] <= bits <= MIXED_RANGE[1]:
            raise _error(raw, f"mixed:BITS takes an average of 1 to 8 bits per weight, not {value}")
        return CompressionSpec(text=raw, method="mixed", bits=bits)
    if lowered.endswith(".json"):
        path = Path(raw).expanduser()
        if not path.is_file():
            raise _error(raw, f"recipe {path} does not exist; write one with --compress mixed:BITS")
        return CompressionSpec(text=raw, method="recipe", recipe_path=path)
    raise _error(raw)


def read_recipe(path: str | Path) -> dict:
    """A saved recipe (see :mod:`wconv.compress.mixed`), checked for shape: ``{"layers": {name: bits}, ...}``.

    Each value of ``layers`` is an int width (1, 2, 3, 4, 6, 8), or ``null`` / 16 for "keep fp16".
    """
    import json

    path = Path(path)
    try:
        recipe = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise _error(str(path), f"cannot read the recipe: {e}") from e
    layers = recipe.get("layers") if isinstance(recipe, dict) else None
    if not isinstance(layers, dict) or not layers:
        raise _error(str(path), 'not a recipe: expected {"layers": {"<weight name>": bits, ...}}')
    for name, bits in layers.items():
        if bits is not None and bits != 16 and bits not in (1, 2, 3, 4, 6, 8):
            raise _error(str(path), f"layer {name} has {bits!r} bits; use 1, 2, 3, 4, 6, 8 or 16 (fp16)")
    group = recipe.get("group_size")
    if group is not None and group not in GROUP_SIZES:
        raise _error(str(path), f"group_size {group!r} is not one of {', '.join(map(str, GROUP_SIZES))}")
    return recipe


def recipe_min_target(recipe: dict | str | Path) -> str:
    """iOS18 when a recipe uses 3-bit LUTs or per-grouped-channel LUTs, else iOS16."""
    if not isinstance(recipe, dict):
        recipe = read_recipe(recipe)
    widths = {bits for bits in recipe["layers"].values() if bits not in (None, 16)}
    if recipe.get("group_size") or widths - set(IOS16_PALETTE_BITS):
        return "iOS18"
    return "iOS16"
