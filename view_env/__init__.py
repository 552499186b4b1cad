"""view_env: batched, device-resident Gymnasium environments whose observations are views of images."""

from __future__ import annotations

__version__ = "0.1.0"
