"""Permits to work (特殊作业票, GB 30871-2022): what the registers need beyond a plain
workflow. ``criteria`` holds the standard's acceptance criteria for a gas analysis and
its timing rules, each with its clause; ``analysis`` judges live readings against them
(pure: the caller hands in a snapshot of the channels); ``watch`` flags a permit in
progress when an alarm hits one of its channels. The permit register types themselves
are data in ``gateway/admin/registers/register_types.yaml``; their workflow steps run in
``gateway/admin/registers/permits.py``."""
