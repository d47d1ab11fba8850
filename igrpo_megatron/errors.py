"""The one base class of the mistakes a user can make and fix.

Every error the project raises because of its input (config, data, model path, a damaged or
foreign checkpoint, an unreachable server, a full disk) derives from :class:`UserError`, and its
message is one line: what is wrong and how to fix it. :func:`igrpo_megatron.cli.runner.run_cli`
prints such an error as that one line (exit 2); anything else is a bug of the project and keeps
its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input or environment; the message says what and how to fix it."""

    label = "error"  # the CLIs print "<prog>: <label>: <message>"
