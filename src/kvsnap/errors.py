"""The exception tree of kvsnap and the exit code of each class.

Every error that kvsnap reports on purpose is a `KvsnapError`. Foreign errors
(from the Cloudflare SDK, obstore, the file system) are translated into one of
these classes at the boundary that meets them and chained with ``raise ... from``.
The top-level handler in `kvsnap.cli.main` prints ``error: <message>`` and the
hint, and exits with the class's code.

Exit codes, never reused for another meaning:

====  ===========================================================
0     success
1     unexpected internal error (a bug: the traceback is shown)
2     command-line usage error (unknown option, missing argument)
3     partial failure: some namespaces failed, the others succeeded
4     verification failed: a part is missing, truncated or corrupt
5     differences found (`kvsnap diff`), like diff(1)'s 1 but not shared
6     restore refused: its plan conflicts with live keys, breaks a cap or
      holds invalid records; nothing was written
7     restore wrote its plan but the read-back found mismatches
8     anomaly: a new snapshot differs from the previous one by more than
      the policy's share; the previous snapshot is held
10    configuration error: bad setting, unknown namespace, bad URL
11    authentication error: the API token was rejected (401 or 403)
12    Cloudflare API error that retries did not cure
20    repository error: the object store failed or holds bad data
21    repository not found or not initialised
22    snapshot not found
23    repository locked by another kvsnap process
130   interrupted (Ctrl-C)
141   the reader of standard output closed it early (128 + SIGPIPE)
====  ===========================================================

`kvsnap status` alone follows the convention of monitoring plugins
(Nagios, Icinga, Sensu): 0 every target met, 1 warning, 2 breach. A
repository that is missing or unreadable is a breach (2) there, because
monitoring must page for it; configuration errors keep code 10.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_VERIFY = 4
EXIT_DIFFERENT = 5
EXIT_REFUSED = 6
EXIT_MISMATCH = 7
EXIT_ANOMALY = 8
EXIT_CONFIG = 10
EXIT_AUTH = 11
EXIT_API = 12
EXIT_REPOSITORY = 20
EXIT_NO_REPOSITORY = 21
EXIT_NO_SNAPSHOT = 22
EXIT_LOCKED = 23
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


class KvsnapError(Exception):
    """Base class of every error kvsnap reports; carries an exit code and a hint."""

    exit_code = EXIT_INTERNAL

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(KvsnapError):
    """A setting, flag or configuration file is invalid or missing."""

    exit_code = EXIT_CONFIG


class NamespaceNotFound(ConfigError):
    """A namespace given by id or title matches none, or more than one."""


class AuthError(KvsnapError):
    """The Cloudflare API rejected the token (401 or 403)."""

    exit_code = EXIT_AUTH


class ApiError(KvsnapError):
    """A Cloudflare API request failed and retries did not help."""

    exit_code = EXIT_API


class RateLimitExhausted(ApiError):
    """Requests still got HTTP 429 after every retry."""


class WriteFailed(ApiError):
    """A bulk write or bulk delete still reported keys as failed after every retry."""

    def __init__(
        self, message: str, keys: list[str], *, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.keys = keys


class RepositoryError(KvsnapError):
    """The object store failed, or contains data kvsnap cannot use."""

    exit_code = EXIT_REPOSITORY


class RepositoryNotFound(RepositoryError):
    """No kvsnap repository exists at the location."""

    exit_code = EXIT_NO_REPOSITORY


class SnapshotNotFound(RepositoryError):
    """No snapshot matches the given id, prefix or selector."""

    exit_code = EXIT_NO_SNAPSHOT


class RepositoryLocked(RepositoryError):
    """Another process holds a lock that conflicts with the one asked for."""

    exit_code = EXIT_LOCKED


class VerifyError(KvsnapError):
    """A snapshot failed verification; the message names each bad part."""

    exit_code = EXIT_VERIFY


class PlanRefused(KvsnapError):
    """A restore plan rejected before any write; the message gives the reason."""

    exit_code = EXIT_REFUSED


class RestoreIncomplete(KvsnapError):
    """A restore failed after its first write; the message says what was written.

    It keeps the exit code of the error that stopped it (`cause`), so an API
    failure still exits 12 and a repository failure 20.
    """

    def __init__(
        self, message: str, cause: KvsnapError, *, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.cause = cause
        self.exit_code = cause.exit_code


class PartialFailure(KvsnapError):
    """Some namespaces of a run failed while others succeeded."""

    exit_code = EXIT_PARTIAL


class InvalidRecord(VerifyError):
    """A snapshot record that Workers KV would reject or bulk write cannot carry."""

    def __init__(self, key: str, reason: str, *, hint: str | None = None) -> None:
        super().__init__(f"record of key {key!r} is invalid: {reason}", hint=hint)
        self.key = key
        self.reason = reason


class ObjectNotFound(RepositoryError):
    """An object that kvsnap expected in the object store does not exist."""


class ObjectExists(RepositoryError):
    """A create-only write found an object already at the path."""


class CorruptPart(VerifyError):
    """A stored part is missing, has the wrong size or checksum, or bad records."""

    def __init__(self, path: str, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"part {path} is corrupt: {problem}", hint=hint)
        self.path = path
        self.problem = problem
