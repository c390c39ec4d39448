"""The base of every config model, in a leaf of its own so that the sections kept in their
own modules (gateway/core/config_<area>.py) can use it while gateway.core.config imports
them into ``Config``."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys are errors (a typo must not be silently ignored)."""
    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)
