"""The template publisher for provincial hazardous-chemicals platforms: docs/regulators.md."""
