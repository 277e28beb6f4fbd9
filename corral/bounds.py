"""The largest numbers the API takes, whatever the deployment allows: what the protos can carry
(int32, int64, Duration) and the documented caps of durations. The REST models declare them as
field bounds, so an out-of-range value is a 400 naming the field, never a failed conversion;
the deployment's own, lower maximums (CORRAL_MAX_*) are checked after, by the scheduler."""

from __future__ import annotations

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1

# A step may be given at most a week (CORRAL_MAX_STEP_TIMEOUT_SECONDS is at most this).
MAX_STEP_TIMEOUT_SECONDS = 7 * 24 * 3600.0
# A sandbox may be given at most a year at once (CORRAL_SANDBOX_MAX_TTL_SECONDS likewise).
MAX_TTL_SECONDS = 365 * 24 * 3600.0
# The longest a command on a long-lived sandbox (a sandbox call, not a task) may run.
MAX_COMMAND_TIMEOUT_SECONDS = 24 * 3600.0
# Longest search query, in characters (SQLite refuses LIKE patterns over 50,000 bytes).
MAX_SEARCH_QUERY_CHARS = 1000
# Deepest nesting of a JSON request body (objects and arrays); no valid body nears it.
MAX_JSON_DEPTH = 64
