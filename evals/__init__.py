"""Eval suites, runs, results and grades; the profile loop."""
