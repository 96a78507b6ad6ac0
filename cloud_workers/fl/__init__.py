"""The federated-learning coordinator: rounds announced over the bus, updates checked and
refused by reason (:mod:`.intake`), aggregated streaming and robustly (:mod:`.aggregate`),
the candidate evaluated and released only when better (:mod:`.coordinator`)."""
