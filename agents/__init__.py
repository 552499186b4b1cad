"""agents: the annotation-bootstrapping GVF pretrainer and the probes that measure its encoder."""

from __future__ import annotations
