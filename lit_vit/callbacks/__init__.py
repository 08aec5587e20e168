"""Lightning callbacks: thin schedulers and loggers around :mod:`lit_vit.attention`."""

from lit_vit.callbacks.prediction_writer import PredictionWriter

__all__ = ["PredictionWriter"]
