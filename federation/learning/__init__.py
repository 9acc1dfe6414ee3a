"""fedgov's learning core: models, DP-SGD, evaluation releases, FedAvg, quantisation.

Pure numpy, no Django, Celery or DRF, because it runs at partner sites inside the agent,
next to the data, without the coordinator's stack (a test enforces the boundary). The
coordinator imports it too, for the pieces that happen on its side (combining noisy
evaluation counts, dequantising the secure sum, applying the FedAvg update).

Privacy contract: everything here that touches partner records and returns something
meant to leave the partner is either a DP-SGD update (``train_round``: the DP event is
``SelfComposed(PoissonSampled(q, Gaussian(z)), K)`` with the returned ``used`` parameters)
or a noisy evaluation release (``release_evaluation``: two Gaussian mechanisms with noise
multiplier sigma, see ``evaluation_event_params``).
"""

from .aggregate import apply_update, fedavg_weights, secagg_input, secure_average, weighted_average
from .data import TRANSFORMS, Schema, load_csv, schema_from_csv, train_eval_split, write_csv
from .dpsgd import (
    clipped_gradient_sum,
    dp_sgd,
    noisy_gradient,
    per_example_gradients,
    poisson_sample,
    validate_dp_params,
)
from .errors import DataError, DPParameterError, LearningError, ModelSpecError, QuantisationError
from .evaluation import EvaluationRelease, combine_accuracy, evaluation_event_params, release_evaluation
from .models import ModelSpec, init_params, per_example_loss, predict, predict_proba, unflatten
from .quantise import QuantSpec, dequantise_sum, modular_sum, quantise, rounding_bound
from .training import evaluate, train_round

__all__ = [
    "DPParameterError",
    "DataError",
    "EvaluationRelease",
    "LearningError",
    "ModelSpec",
    "ModelSpecError",
    "QuantSpec",
    "QuantisationError",
    "Schema",
    "TRANSFORMS",
    "apply_update",
    "clipped_gradient_sum",
    "combine_accuracy",
    "dequantise_sum",
    "dp_sgd",
    "evaluate",
    "evaluation_event_params",
    "fedavg_weights",
    "init_params",
    "load_csv",
    "modular_sum",
    "noisy_gradient",
    "per_example_gradients",
    "per_example_loss",
    "poisson_sample",
    "predict",
    "predict_proba",
    "quantise",
    "release_evaluation",
    "rounding_bound",
    "schema_from_csv",
    "secagg_input",
    "secure_average",
    "train_eval_split",
    "train_round",
    "unflatten",
    "validate_dp_params",
    "weighted_average",
    "write_csv",
]
