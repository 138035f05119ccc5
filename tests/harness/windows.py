"""Budget windows start at multiples of their length since the epoch (the filter's rule): a test
that counts spend across a window's end sees it start over, or, in a sliding window, sees the
previous window's share shrink. Such tests wait first."""
import time


def inside_one_window(window: int, seconds: float):
    """Waits, if need be, until the next `seconds` fall inside one `window`-second window."""
    left = window - time.time() % window
    if left < seconds:
        time.sleep(left + 0.5)
