"""Package list for setuptools (the rest of the metadata is in pyproject.toml).

``broker_config/`` stays at the top of the repository and ships inside the wheel as the
``vlabus.broker.templates`` package (``package-dir`` in pyproject.toml), so an installed vlabus
renders broker configurations exactly as a checkout does.
"""

from setuptools import find_packages, setup

# bench/ and tests/ run from a checkout only: nothing installed imports them
OWN = ["schemas*", "security*", "vlabus*", "edge_agent*", "cloud_workers*"]

setup(packages=[*find_packages(include=OWN), "vlabus.broker.templates"])
