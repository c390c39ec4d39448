"""Occupational-hygiene settings: the reference conditions for ppm ↔ mg/m³ (docs/rules.md).

GBZ 159-2004 §3.4 brings sampled air volumes to 20 °C and 101.3 kPa, the conditions the
GBZ 2.1 limits (mg/m³) refer to; a site whose detectors are calibrated otherwise can say so.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from gateway.core.units import Number

R_GAS = 8.314462618  # J/(mol·K)


class HygieneSection(BaseModel):
    # strict like gateway.core.config.Strict (not imported from there: config imports this module)
    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)

    reference_temperature_c: Number = Field(default=20.0, ge=-20, le=50,
                                            description="°C, GBZ 159-2004 §3.4: 20 °C")
    reference_pressure_kpa: Number = Field(default=101.3, ge=50, le=120,
                                           description="kPa, GBZ 159-2004 §3.4: 101.3 kPa")

    def molar_volume_l(self) -> float:
        """Ideal-gas molar volume R·T/p in L/mol (24.061 at 20 °C, 101.3 kPa)."""
        t_k = float(self.reference_temperature_c) + 273.15
        return round(R_GAS * t_k / float(self.reference_pressure_kpa), 3)
