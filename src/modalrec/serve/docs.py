"""/docs (Swagger UI 5) from the assets of the `fastapi-offline` package: FastAPI's default page loads them from a
CDN, which leaves an offline machine with a blank page (and Swagger UI 4 refuses OpenAPI 3.1, which FastAPI
writes)."""

from __future__ import annotations

from pathlib import Path

STATIC = "/static/swagger-ui"


def assets() -> Path | None:
    """The folder holding swagger-ui-bundle.js and swagger-ui.css, or None when the package is missing."""
    try:
        import fastapi_offline
    except ImportError:  # pragma: no cover - the serve extra installs it
        return None
    folder = Path(fastapi_offline.__file__).parent / "static"
    return folder if (folder / "swagger-ui-bundle.js").exists() else None


def mount_docs(app) -> None:
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    folder = assets()
    if folder is None:
        return
    app.mount(STATIC, StaticFiles(directory=str(folder)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API",
                                   swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{STATIC}/swagger-ui.css",
                                   swagger_favicon_url=f"{STATIC}/favicon.png")
