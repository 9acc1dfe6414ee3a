"""DP parameter sets and events shared by the accountant's and the DP events' tests (pure)."""

from accounting import dp_events

# (q, z, K, eval_noise_multiplier, eval_count); the first is Abadi et al.'s MNIST setting:
# 60 epochs of batch 256 over 60,000 records.
PARAMETER_SETS = [
    (256 / 60000, 1.1, 14063, None, 1),
    (0.01, 1.0, 100, None, 1),
    (0.05, 0.8, 50, 20.0, 2),
    (1.0, 5.0, 3, None, 1),
    (0.001, 2.0, 1000, 50.0, 1),
    (0.2, 1.5, 10, None, 1),
    (0.02, 0.6, 200, 10.0, 3),
]


def params(q, z, K, ez, ec):
    return {"q": q, "z": z, "K": K, "eval_noise_multiplier": ez, "eval_count": ec}


def varied_events():
    return [dp_events.dataset_round_event(params(*p)) for p in PARAMETER_SETS[1:]] + [
        dp_events.round_event(0.03, 1.0 + 0.1 * i, 20 + i) for i in range(5)
    ]
