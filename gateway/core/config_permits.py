"""The ``permits:`` section: how the permits to work (GB 30871-2022) use live readings
(docs/registers.md, "Permits to work"). A leaf of the config models: it imports only the
units, so ``gateway.core.config`` can import it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from gateway.core.units import Duration


class PermitsSection(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    stale_after: Duration = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="a reading older than this is stale: a gas analysis refuses it (1 s to 1 h)",
    )
    check_every: Duration = Field(
        default=60.0,
        ge=0.01,
        le=3600,
        description="how often the permits' timing rules (GB 30871-2022: 30 min before work, "
        "interruptions, periodic analysis, validity) are checked",
    )
