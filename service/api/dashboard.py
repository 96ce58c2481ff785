"""/dashboard: the usage dashboard, served by the service itself. Its pages are one HTML shell
whose script (service/dashboard/app.js) calls the /v1 API with the key the user logs in with;
charts are drawn by Plotly, served from the installed ``plotly`` package (no CDN)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

router = APIRouter()
ASSETS = Path(__file__).resolve().parents[1] / "dashboard"
PAGES = ("overview", "spend", "routing", "quality", "budgets", "experiments", "requests", "login")
NOT_FOUND = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>switchboard: no such page</title><link rel="stylesheet" href="/dashboard/assets/style.css">
</head><body><main><h1>No such page</h1><p>The dashboard has these pages: {pages}.</p>
<p><a href="/dashboard/overview">Go to the overview</a></p></main></body></html>"""


@cache
def _shell() -> str:
    return (ASSETS / "index.html").read_text()


def plotly_bundle() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


@router.get("/dashboard", include_in_schema=False)
async def dashboard() -> Response:
    return RedirectResponse("/dashboard/overview")


@router.get("/dashboard/assets/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    files = {
        "app.js": ASSETS / "app.js",
        "style.css": ASSETS / "style.css",
        "plotly.min.js": plotly_bundle(),
    }
    if name not in files:
        return HTMLResponse(NOT_FOUND.format(pages=", ".join(PAGES)), status_code=404)
    return FileResponse(files[name], headers={"Cache-Control": "max-age=300"})


@router.get("/dashboard/{page}", include_in_schema=False)
async def dashboard_page(page: str) -> Response:
    if page not in PAGES:
        return HTMLResponse(NOT_FOUND.format(pages=", ".join(PAGES)), status_code=404)
    return HTMLResponse(_shell().replace("__PAGE__", page))
