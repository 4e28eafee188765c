"""The client's rate limiter on a fake clock: requests and tokens per minute, AIMD concurrency, an endpoint's health."""

from arena10k.ratelimit import RateLimiter


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def limiter(clock, **limits):
    return RateLimiter(limits.pop("max_concurrency", 8), clock=clock, sleep=clock.sleep, **limits)


def test_a_call_beyond_the_requests_per_minute_waits_until_the_oldest_is_a_minute_old():
    clock = FakeClock()
    limit = limiter(clock, requests_per_minute=3)
    for _ in range(3):
        limit.acquire()
        limit.release()
        clock.now += 5
    assert clock.slept == []
    limit.acquire()  # the first call started 15 s ago: 45 s to wait
    assert sum(clock.slept) == 45 and all(s <= 1.0 for s in clock.slept)  # in steps of at most a second


def test_a_call_whose_tokens_exceed_the_minutes_budget_waits():
    clock = FakeClock()
    limit = limiter(clock, tokens_per_minute=1000)
    limit.acquire(600)
    limit.release()
    clock.now += 10
    limit.acquire(300)  # 900 of 1000: admitted
    limit.release()
    assert clock.slept == []
    limit.acquire(200)  # 1100: waits until the 600-token call is a minute old
    assert sum(clock.slept) == 50


def test_a_429_halves_the_calls_in_flight_and_pauses_new_ones_and_successes_grow_them_back():
    clock = FakeClock()
    limit = limiter(clock, max_concurrency=8)
    limit.acquire()
    limit.release(throttled=True, retry_after=7)
    assert limit.concurrency == 4 and limit.throttled_count == 1
    limit.acquire()  # paused for the server's Retry-After
    assert sum(clock.slept) == 7
    for _ in range(4):
        limit.release()
        limit.acquire()
    limit.release()
    assert 4 < limit.concurrency < 5.5  # about one call more per window of successes
    for _ in range(200):
        limit.acquire()
        limit.release()
    assert limit.concurrency == 8  # never above the configured maximum


def test_an_outage_is_failures_with_no_success_among_them():
    clock = FakeClock()
    limit = limiter(clock)
    limit.record_outcome(succeeded=False)
    clock.now += 30
    limit.record_outcome(succeeded=False)
    assert limit.seconds_down() == 30
    started = clock.now
    clock.now += 5
    limit.record_outcome(succeeded=True)
    assert limit.seconds_down() == 0 and limit.seconds_down(since=started) == 0
