"""The base of every config model: unknown keys are errors.

Its own module so that the config sections that live in their own core modules
(``config_modem``, ``config_notify``, ...) and ``gateway.core.config``, which names them
in ``Config``, import it without forming a cycle. ``gateway.core.config.Strict`` is
the same class."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)
