"""Federated learning pieces shared by the robot and the coordinator: the weight-delta file
format (:mod:`vlabus.fl.delta`). The robot side lives in ``edge_agent.fl``, the coordinator in
``cloud_workers.fl``."""
