"""The memory budget that every input is checked against before anything is allocated.

morphreg reads sizes from file headers (NIfTI/MGH dimensions and data type, ``.npy`` headers,
the declared uncompressed sizes of ``.npz`` and checkpoint zip members, a network's config)
and refuses an input that cannot fit, instead of allocating first and failing later (or never,
for a 91-byte file whose header claims gigabytes).

The budget, stated once:

* ``memory_limit()``: the memory morphreg may use, the smallest of the physical memory, the
  address-space limit (``ulimit -v``), and the cgroup limit (containers); the environment
  variable ``MORPHREG_MEMORY_LIMIT`` (bytes, or with a suffix ``K``, ``M``, ``G``, ``T``)
  replaces it.
* One input image may hold at most ``memory_limit() / IMAGE_SHARE`` bytes once converted to
  float32: registering a pair keeps several copies of each image (moving, fixed, moved, their
  tensors, the field with ``ndim`` components, gradients), so one image can never use the
  whole budget.
* A checkpoint's tensors (and a network built from its config) may take at most
  ``memory_limit() / MODEL_SHARE`` bytes (weights, gradients and two Adam moments).

This module imports nothing else of morphreg.
"""

from __future__ import annotations

import os
import re
import resource
from pathlib import Path

ENV_VAR = "MORPHREG_MEMORY_LIMIT"
IMAGE_SHARE = 8
MODEL_SHARE = 4
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """``"512M"`` -> 536870912; plain integers are bytes. ``ValueError`` for anything else."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(
            f"environment variable {ENV_VAR} must be a size in bytes such as 8G or 512M, got {text!r}"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def memory_limit() -> int:
    """Bytes of memory morphreg may use (see the module docstring)."""
    text = os.environ.get(ENV_VAR)
    if text:
        return parse_size(text)
    candidates = [_physical_memory(), _cgroup_limit()]
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    if soft not in (resource.RLIM_INFINITY, -1):
        candidates.append(int(soft))
    known = [c for c in candidates if c]
    return min(known) if known else 2**40


def format_bytes(n: float) -> str:
    """``3.2e9`` -> ``"3.2 GB"`` (decimal units, two significant digits)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2g} {unit}" if n / size < 10 else f"{n / size:.0f} {unit}"
    return f"{int(n)} bytes"


def budget_note() -> str:
    """Where the limit comes from, for messages."""
    source = ENV_VAR if os.environ.get(ENV_VAR) else f"the least of RAM, ulimit -v and cgroup; {ENV_VAR} overrides it"
    return f"memory limit {format_bytes(memory_limit())} ({source})"


def image_budget() -> int:
    """Most bytes one image may take as float32."""
    return memory_limit() // IMAGE_SHARE


def model_budget() -> int:
    """Most bytes a network's weights may take."""
    return memory_limit() // MODEL_SHARE
