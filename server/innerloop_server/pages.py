"""The pages a person opens in a browser: the drawing page at ``/`` and the API docs.

Everything is served from files on this machine, so both work offline and behind a firewall:
the drawing page from ``static/`` (plain HTML, CSS and JavaScript, no build step), Swagger UI
(``/docs``) and ReDoc (``/redoc``) from the copies that the ``fastapi-offline`` package ships
(FastAPI's defaults load them from a CDN, and show a blank page without one).

The drawing page and its assets are open even when an API key is set (they hold no data and
reach no model); the page sends the key the user types with every API call.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

TITLE = "innerloop"
STATIC = Path(__file__).resolve().parent / "static"
PAGE_ASSETS = "/assets"  # the drawing page's files
DOCS_ASSETS = "/docs-assets"  # Swagger UI and ReDoc
REPLACED = frozenset({"/", "/docs", "/redoc"})


def docs_assets_folder() -> Path:
    """Swagger UI 5 and ReDoc 2 bundles, from the ``fastapi-offline`` wheel."""
    import fastapi_offline

    return Path(fastapi_offline.__file__).resolve().parent / "static"


def install_pages(app: FastAPI) -> None:
    """Replace LitServe's ``/`` and FastAPI's CDN-backed ``/docs`` and ``/redoc``."""
    app.title = TITLE
    app.openapi_schema = None  # rebuilt with the title on the next /openapi.json
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in REPLACED]
    app.mount(PAGE_ASSETS, StaticFiles(directory=STATIC), name="assets")
    app.mount(DOCS_ASSETS, StaticFiles(directory=docs_assets_folder()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/", include_in_schema=False)
    async def drawing_page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{TITLE} API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            oauth2_redirect_url=app.swagger_ui_oauth2_redirect_url,
            # no badge that asks validator.swagger.io about our schema
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{TITLE} API",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
