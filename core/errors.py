"""Exceptions raised by wconv. Every one carries a one-line, user-facing message."""

from __future__ import annotations


class WconvError(Exception):
    """Base class of every error wconv reports to a user."""

    exit_code = 1


class InputError(WconvError):
    """Bad input: an unknown name, a missing or truncated file, an unwritable directory (exit 2)."""

    exit_code = 2


class ConversionError(WconvError):
    """A stage failed on valid input (exit 1)."""


class VerificationError(WconvError):
    """A converted artifact does not match its reference closely enough (exit 1)."""


class UnsupportedOpError(WconvError):
    """The reference evaluator met a MIL op it does not implement (exit 1)."""

    def __init__(self, op_type: str, op_name: str):
        super().__init__(f"unsupported MIL op '{op_type}' (op '{op_name}'): the reference evaluator cannot run it")
        self.op_type = op_type
        self.op_name = op_name


class StageError(ConversionError):
    """A plugin raised inside a pipeline stage; names the stage and the plugin."""

    def __init__(self, stage: str, plugins: list[str], cause: BaseException | str):
        who = ", ".join(plugins) if plugins else "no plugin"
        super().__init__(f"stage '{stage}' failed in plugin {who}: {cause}")
        self.stage = stage
        self.plugins = plugins
