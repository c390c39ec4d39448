"""The ministry's IoT sensing platform (dust-explosion monitoring): docs/regulators.md."""
