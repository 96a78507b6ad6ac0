"""The robot's side of federated learning: the experience buffer (:mod:`.buffer`), private
local training in a low-priority process (:mod:`.trainer`), and the round client that answers
announced rounds with signed, quantised deltas (:mod:`.client`)."""
