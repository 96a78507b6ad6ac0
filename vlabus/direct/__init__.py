"""The direct data plane: robots' frames straight to a worker's ZeroMQ socket, replies back on
the same connection; status, wills, model releases and everything else stay on the hub or
broker. :mod:`vlabus.direct.server` is the worker's end, :mod:`vlabus.direct.robot` the robot's,
:mod:`vlabus.direct.choice` picks the worker (power of two choices on advertised queue depth).
See docs/security-session.md for what protects it.
"""
