"""fedmom: federated LoRA fine-tuning experiments (FedMomentum and its baselines).

Run `fedmom --help` for the commands.
"""

__version__ = "0.1.0"
