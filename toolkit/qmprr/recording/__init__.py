"""The ``qmprr/1`` recording: records, their on-disk form, writer, reader, checks.

See ``recordings/README.md`` for the format, field by field.
"""

from .model import (
    ABSENT,
    FORMAT,
    Client,
    Close,
    Command,
    Event,
    Fd,
    Greeting,
    Header,
    Local,
    Msg,
    Note,
    Record,
    Reply,
    Taint,
    Tx,
)
from .chain import SealKey, SealKeyError
from .reader import Problem, RecordingReader, Torn, read_records
from .redact import REDACTED, ArgumentRule, HmpRule, Redactor
from .verify import VerifyReport, verify
from .header import header_for_greeting, new_header
from .log import RecordLog
from .writer import RecordWriter, SyncPolicy, relevant_env

__all__ = [
    "ABSENT",
    "FORMAT",
    "REDACTED",
    "ArgumentRule",
    "Client",
    "Close",
    "Command",
    "Event",
    "Fd",
    "Greeting",
    "Header",
    "Local",
    "HmpRule",
    "Msg",
    "Note",
    "Problem",
    "Record",
    "RecordLog",
    "RecordWriter",
    "RecordingReader",
    "Redactor",
    "Reply",
    "SealKey",
    "SealKeyError",
    "SyncPolicy",
    "Taint",
    "Torn",
    "Tx",
    "VerifyReport",
    "header_for_greeting",
    "new_header",
    "read_records",
    "relevant_env",
    "verify",
]
