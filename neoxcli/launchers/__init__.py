"""Launchers: turn hosts, slots and a resolved config into the commands that start ranks."""
