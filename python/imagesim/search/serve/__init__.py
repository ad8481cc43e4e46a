"""`imagesim serve`: a map viewer over an ARD delivery, its chips and a similarity index.

FastAPI and uvicorn are imported only when the app is created (``imagesim.search.serve.app.create_app``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    from imagesim.errors import require

    require("fastapi", "serve", purpose="`imagesim serve`")
    from imagesim.search.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)
