"""`fedmom train --engine flower` (the optional extra `fedmom[flower]`, docs/flower.md).

- engine.py    the ServerApp strategy and ClientApp over fedmom's server object
- app.py       Flower App entry points for a deployment (recipes/flower_app/pyproject.toml names them)
- secagg.py    --secagg: Flower's SecAgg+ workflow around the same strategy (legacy strategy API)
- secagg_rules.py  which methods can run under secure aggregation, and why not the others
"""
