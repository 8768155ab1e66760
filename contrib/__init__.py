"""Contributed tooling: the namespace lab, example configs, units."""
