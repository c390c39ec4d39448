"""The page's static files: what lies under gateway/admin/static/ with a listed suffix, nothing else."""

from __future__ import annotations

import pytest
from fastapi import HTTPException

from gateway.admin.routes.page import STATIC, static_file


def test_files_of_the_page_are_found() -> None:
    assert static_file("shell.js") == (STATIC / "shell.js").resolve()
    assert static_file("views/start.js") == (STATIC / "views" / "start.js").resolve()
    assert static_file("style.css").name == "style.css"


@pytest.mark.parametrize(
    "name",
    [
        "../routes/page.py",  # outside the folder
        "../../core/secrets.py",
        "/etc/passwd",  # absolute
        "index.html",  # served at /, not here
        "nope.js",  # absent
        "a\\..\\b.js",
        "x" * 300 + ".js",  # too long: refused before the filesystem
        "app.js\0.png",
    ],
)
def test_anything_else_is_404(name: str) -> None:
    with pytest.raises(HTTPException) as e:
        static_file(name)
    assert e.value.status_code == 404
