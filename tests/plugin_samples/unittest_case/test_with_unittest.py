"""A project tested with unittest.IsolatedAsyncioTestCase."""

import asyncio
import unittest

import samplelib


class Case(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        samplelib.record("asyncSetUp")
        self.setup_loop = asyncio.get_running_loop()

    async def test_loop(self):
        samplelib.record("test")
        self.assertIs(self.setup_loop, asyncio.get_running_loop())

    async def test_sleep(self):
        await asyncio.sleep(0.01)
        samplelib.record("test")
