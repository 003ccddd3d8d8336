from optionfeed.deribit.credits import SUBSCRIBE_POLICY


def test_subscribe_bucket_allows_a_burst_of_ten_then_refills_at_3_per_second() -> None:
    bucket = SUBSCRIBE_POLICY.bucket(now=0.0)
    assert all(bucket.try_spend(3000, now=0.0) for _ in range(10))
    assert not bucket.try_spend(3000, now=0.0)
    assert abs(bucket.delay(3000, now=0.0) - 0.3) < 1e-9
    assert bucket.try_spend(3000, now=0.3)
    assert not bucket.try_spend(3000, now=0.31)
