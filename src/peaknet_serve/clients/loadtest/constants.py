"""Limits and exit codes of the load test."""

MAX_POOL_BYTES = 512 * 2**20
#: Longest a waiting main thread blocks: the kernel may hand a SIGINT (Ctrl-C) to any thread, and
#: Python runs the handler only in the main thread, once it runs again; a blocking wait would
#: delay Ctrl-C to the end of the run.
SIGNAL_CHECK_S = 0.1

EXIT_OK, EXIT_THRESHOLDS, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOTHING_MEASURED, EXIT_CLIENT_DIED = 0, 1, 2, 3, 4, 5
