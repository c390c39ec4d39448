"""Alarm notification: routes alarms from the journal to people (docs/notify.md)."""
