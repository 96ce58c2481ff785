"""Cached reads: one read in flight for many callers, stale copies served while a read replaces
them, and invalidation."""

from __future__ import annotations

import asyncio

import pytest

from service.refreshing import Refreshing


class Source:
    """A value behind a slow read that counts its reads."""

    def __init__(self):
        self.value = 1
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def read(self) -> int:
        self.reads += 1
        await self.gate.wait()
        return self.value


def test_concurrent_callers_share_one_read():
    async def scenario():
        source = Source()
        cached = Refreshing(source.read, max_age_s=60)
        source.gate.clear()
        waiting = [asyncio.ensure_future(cached.get()) for _ in range(50)]
        await asyncio.sleep(0.01)
        source.gate.set()
        assert await asyncio.gather(*waiting) == [1] * 50
        assert source.reads == 1
        assert await cached.get() == 1 and source.reads == 1  # fresh: no read

    asyncio.run(scenario())


def test_a_stale_copy_is_served_while_one_read_replaces_it():
    async def scenario():
        source = Source()
        cached = Refreshing(source.read, max_age_s=0.2)
        assert await cached.get() == 1
        await asyncio.sleep(0.25)  # stale, younger than twice the age
        source.value, source.gate = 2, asyncio.Event()
        assert [await cached.get() for _ in range(5)] == [1] * 5  # nobody waits for the read
        await asyncio.sleep(0)
        assert source.reads == 2  # one read in the background for all five
        source.gate.set()
        await asyncio.sleep(0.01)
        assert await cached.get() == 2
        await asyncio.sleep(0.45)  # older than twice the age: callers wait for a read
        source.value = 3
        assert await cached.get() == 3

    asyncio.run(scenario())


def test_invalidation_and_a_zero_age_read_afresh():
    async def scenario():
        source = Source()
        cached = Refreshing(source.read, max_age_s=60)
        assert await cached.get() == 1
        source.value = 2
        assert await cached.get() == 1
        cached.invalidate()
        assert await cached.get() == 2
        always = Refreshing(source.read, max_age_s=0)
        reads = source.reads
        assert await always.get() == 2 and await always.get() == 2
        assert source.reads == reads + 2

    asyncio.run(scenario())


def test_a_failed_read_reaches_its_callers_and_the_next_call_reads_again():
    async def scenario():
        calls = 0

        async def flaky() -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ConnectionError("database away")
            return 7

        cached = Refreshing(flaky, max_age_s=60)
        with pytest.raises(ConnectionError):
            await cached.get()
        assert await cached.get() == 7 and calls == 2

    asyncio.run(scenario())
