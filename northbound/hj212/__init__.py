"""HJ 212-2017 (污染物在线监控（监测）系统数据传输标准): the frame codec (``codec``), the
upload contents (``uploads``), the journal-to-message builder (``builder``) and the
adapter for one platform (``adapter``). See docs/regulators.md."""
