"""Log lines that cannot flood: a rate limit per message, and one access line per request.

Under load or attack the same line can repeat thousands of times a second (accept errors,
rejected requests, timeouts). `RateLimitFilter` lets a steady trickle of each message through
and says how many were dropped; the access log (`serving.access`, one line per REST or gRPC
request) carries its own limit, so it stays readable at any request rate.
"""

import logging
import threading
import time

ACCESS_LOGGER = "serving.access"


class RateLimitFilter(logging.Filter):
    """Lets at most `rate` records a second through per (logger, message template), with
    bursts of `burst`; the first record let through after some were dropped says how many.

    A token bucket per key: the keys are message templates, so their number is bounded by
    the code, not by the traffic.
    """

    def __init__(self, rate: float = 5.0, burst: int = 20):
        super().__init__()
        self.rate = rate
        self.burst = burst
        self._buckets: dict[tuple[str, str], list[float]] = {}  # key -> [tokens, time, dropped]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(key, [float(self.burst), now, 0])
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
            bucket[1] = now
            if bucket[0] < 1:
                bucket[2] += 1
                return False
            bucket[0] -= 1
            dropped, bucket[2] = int(bucket[2]), 0
        if dropped:
            record.msg = f"[{dropped} similar lines dropped] {record.msg}"
        return True


def access_logger(rate: float = 10.0, burst: int = 50) -> logging.Logger:
    """The `serving.access` logger, rate-limited (installed once)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(item, RateLimitFilter) for item in logger.filters):
        logger.addFilter(RateLimitFilter(rate, burst))
    return logger


def limit_root_handlers(rate: float = 5.0, burst: int = 20) -> None:
    """Rate-limits every record the root handlers write (the command line's logging), so
    that library lines too (asyncio's accept errors, aiohttp, gRPC) cannot flood."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(item, RateLimitFilter) for item in handler.filters):
            handler.addFilter(RateLimitFilter(rate, burst))
