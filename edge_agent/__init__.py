"""The robot side of vlabus: one action per control step, from the cloud when it is in time.

Entry points: :func:`edge_agent.stack.open_edge` (a started :class:`edge_agent.agent.EdgeAgent`),
:func:`edge_agent.sim.run_sim_robot` (a simulated robot run, returns its summary) and
:class:`edge_agent.threaded.ThreadedAgent` (a blocking front for control loops). Submodules are
imported explicitly so that ``import edge_agent.scene`` stays light.
"""
