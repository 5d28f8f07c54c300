"""The seed README's usage example, run as printed (plus its missing imports)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

EXAMPLE = textwrap.dedent(
    """
    import sys
    from collections.abc import AsyncIterator
    from typing import Annotated, Any

    import anyio

    from datagraph import Depends, IO, IOVal, LocalExecutor, Flow, Supervisor, Processor

    # some externally-defined 'thing'
    def get_multiplier():
        return 2

    foobar = Processor(
        name="foobar",
        inputs=["foo"],
        outputs=["bar"]
    )

    @foobar
    async def _foobar(
        foo: IO[int],
        multiplier: Annotated[int, Depends(get_multiplier)],
    ) -> AsyncIterator[IOVal[int]]:
        foo_val = await foo.first()
        for i in range(foo_val):
            yield IOVal(name="bar", value=i * multiplier)


    async def main():
        flow = Flow.from_processors(foobar)
        flow.resolve()

        result: dict[str, IO[Any]] = await Supervisor.instance.start_flow(
            flow,
            inputs=[IOVal(name="foo", value=5)]
        )

        async for val in result["bar"].stream():
            print(val)

    URL = sys.argv[2] if len(sys.argv) > 2 else None
    if URL:
        Supervisor.attach(redis_config={"url": URL}, executor=LocalExecutor())
    else:
        Supervisor.attach(executor=LocalExecutor())

    anyio.run(main, backend=sys.argv[1])
    """
)


@pytest.mark.stores
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("store", ["url", "embedded"])
def test_readme_example_prints_0_2_4_6_8(tmp_path, valkey_url: str, backend: str, store: str) -> None:
    script = tmp_path / "example.py"
    script.write_text(EXAMPLE)
    args = [sys.executable, str(script), backend]
    if store == "url":
        args.append(valkey_url)
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "2", "4", "6", "8"]
    if store == "embedded":
        assert "embedded Valkey at redis://127.0.0.1:" in proc.stderr
