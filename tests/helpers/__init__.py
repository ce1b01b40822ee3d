"""Helpers of the tests, in one place: test modules import from here, never from each other."""
