"""The one way safegw reads a secret from a file (passwords, tokens, robot keys).

A secret file is named in the config, resolved against the config file's folder, and
must be readable by its owner only: a file that group or others may read is refused
with its path and mode, since the secret may already have leaked. The value is the
file's first line, stripped. Secrets are never logged; errors name the file, not the
content.
"""

from __future__ import annotations

import stat
from pathlib import Path

from gateway.core.config import resolve_path


class SecretFileError(Exception):
    """A secret file that cannot be used: missing, unreadable, or readable by others."""


def read_secret(path: Path | str, base_dir: Path) -> str:
    """The secret in ``path`` (relative to ``base_dir``): its first line, stripped."""
    p = resolve_path(path, base_dir)
    try:
        st = p.stat()
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SecretFileError(f"secret file {p}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise SecretFileError(f"secret file {p}: not UTF-8 text") from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(f"secret file {p} is readable by others (mode {mode:04o}); chmod 600 {p}")
    lines = text.splitlines()
    return lines[0].strip() if lines else ""
