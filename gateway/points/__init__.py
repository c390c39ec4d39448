"""Point tables (点位表) in and out: a contractor's Excel/CSV table ↔ ``devices:`` config.

``tables`` reads and writes the files (bounded before work), ``convert`` turns rows into
devices and channels and back, ``cli`` adds ``safegw points import|export``.
"""
