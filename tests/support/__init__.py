"""Helpers shared by the test tiers; nothing here is collected as a test.

``ROOT``: the repository root (the folder above ``tests``). ``nets``: tiny networks, their
batches and the comparison of two selections; ``cli``: running the repository's scripts, as
processes or in this process; ``conformance``: the conformance suite's generic helpers;
``device_audit``: the meta-device audit of host syncs and device mixing.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
