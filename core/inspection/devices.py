"""Which Apple devices a model fits, from the bundled ``devices.json`` (RAM, chip, Neural Engine; sources inside)."""

from __future__ import annotations

import functools
import json
from importlib.resources import files

GIB = 1 << 30


@functools.cache
def device_table() -> dict:
    return json.loads(files(__package__).joinpath("devices.json").read_text())


def fit_table(resident_bytes: int) -> list[dict]:
    """Every device with its app memory budget (RAM x the budget fraction of its kind) and whether ``resident_bytes`` fits."""
    table = device_table()
    rows = []
    for device in table["devices"]:
        budget = int(device["ram_gb"] * GIB * table["budget_fraction"][device["kind"]])
        rows.append({**{key: device[key] for key in ("name", "kind", "chip", "ram_gb", "ane_cores", "ane_tops")},
                     "budget_bytes": budget, "fits": resident_bytes <= budget})
    return rows


def fitting_devices(resident_bytes: int) -> list[str]:
    """The names of the devices ``resident_bytes`` fits."""
    return [row["name"] for row in fit_table(resident_bytes) if row["fits"]]
