"""Routers: the decision rule, the learned router and the heuristic baseline."""
