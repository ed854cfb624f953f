"""Preset training configs, one TOML file per process; installed as ``genflow.configs`` and
read with :mod:`importlib.resources` (see :func:`genflow.config.read_preset`)."""
