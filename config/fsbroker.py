"""The embedded broker (``make run``): kombu's filesystem transport, safe against its reader.

kombu's ``_put`` creates ``<name>.msg`` and writes the message into it afterwards, and ``_get``
takes any ``*.msg`` without the writer's lock. A worker that took a file in between read an
empty one, raised a JSONDecodeError, and Celery stopped the worker as an unrecoverable error
(kombu issue #1551): in ``make run`` the whole product went down with it. Here a message is
written under a name no reader takes and renamed into place, so a reader sees it whole or not
at all; and a file that still cannot be read is skipped with a warning, not raised: a message
only rings a doorbell, which the sweep rings again (invariant 1).

``config.celery`` points kombu's ``filesystem`` alias here, so ``filesystem://`` URLs use it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from time import monotonic
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

log = logging.getLogger(__name__)


class Channel(filesystem.Channel):
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".part"  # not "<queue>.msg": no reader takes it
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)  # atomic within one directory
        except OSError as exc:
            # A full disk left an empty ``.part`` behind at each try (thousands an hour, each
            # listed by the consumer's every poll).
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        while True:  # until a readable message, or Empty from the folder running out
            try:
                return super()._get(queue)
            except ValueError:  # JSONDecodeError: a file that is not a whole message
                log.warning("skipped an unreadable message on queue %r", queue)


class Transport(filesystem.Transport):
    Channel = Channel
