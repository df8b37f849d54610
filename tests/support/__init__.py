"""Helpers shared by the test tiers; nothing here is collected as a test."""
