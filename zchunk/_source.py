"""The :class:`~zchunk.stack.Source` protocol, under the name the operations import it by.

It is defined in :mod:`zchunk.stack`, beside the Stack whose `source` it types (defined here, it
made an import circle with :mod:`zchunk.stack`). New code imports it from there.
"""

from zchunk.stack import Source

__all__ = ["Source"]
