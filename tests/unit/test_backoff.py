import random

from optionfeed.backoff import Backoff


def test_delays_are_full_jitter_under_an_exponential_ceiling_with_a_cap() -> None:
    backoff = Backoff(base=0.5, cap=8.0, rng=random.Random(1))
    ceilings = []
    for _ in range(8):
        ceiling = backoff.ceiling()
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
        ceilings.append(ceiling)
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.ceiling() == 0.5


def test_connections_that_fail_together_do_not_retry_together() -> None:
    # Twenty connections dropped at the same instant, on their fourth attempt (ceiling 4 s).
    delays = []
    for seed in range(20):
        backoff = Backoff(base=0.5, cap=30.0, rng=random.Random(seed), attempt=3)
        delays.append(backoff.next_delay())
    assert max(delays) - min(delays) > 2.0  # spread over the window, not clustered
    assert len({round(d, 2) for d in delays}) == 20
