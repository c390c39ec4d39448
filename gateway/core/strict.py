"""The base of every config model: unknown keys are errors.

Its own module so that the config sections that live in their own core modules
(``config_modem``, ``config_notify``, ...) and ``gateway.core.config``, which names them
in ``Config``, import it without forming a cycle. ``gateway.core.config.Strict`` is
the same class."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from gateway.core.units import check_host

#: a host name or address, checked like every other host (no spaces or control characters)
Host = Annotated[str, AfterValidator(check_host)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)
