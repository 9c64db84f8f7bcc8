"""Simulated hardware that speaks real protocols, for tests, demos and ``labctl lab up``.

Each simulator runs as ``python -m labctl.services.simulators.<name>`` (``simdut``: a board
on a pty; ``sim_tasmota``: a Tasmota plug on an MQTT broker; ...). ``example_lab.yaml`` is
the simulated lab ``labctl lab up`` starts without a file (``labctl lab example`` prints it).
"""
