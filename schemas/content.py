"""Content checks a message passes at decode, before anything queues it.

The typed decoder checks field types and bounds; these check that the bytes inside a field can
be what the field says: an array's data length against its shape and dtype, a raw image's size
against its bytes, a JPEG's header dimensions against the image's (the header only: no pixel is
decoded here). Each failure is a ``SchemaError`` naming the field, so a receiver rejects the
message with reason ``schema`` instead of spending a queue and batch slot on it.
"""

from __future__ import annotations

from schemas.arrays import unpack_array
from schemas.images import check_image
from schemas.messages import Action, Frame, Message

#: Elements one array of a frame or action may hold (the decoder's body cap bounds bytes).
MAX_ELEMENTS = 1 << 26


def check_content(message: Message) -> None:
    """Raise ``SchemaError`` (with the field's path) when ``message`` holds inconsistent
    content; cheap: lengths and JPEG headers only."""
    if isinstance(message, Frame):
        for name, image in message.cameras.items():
            check_image(image, path=f"cameras.{name}")
        unpack_array(message.state, path="state", max_elements=MAX_ELEMENTS)
    elif isinstance(message, Action):
        unpack_array(message.actions, path="actions", max_elements=MAX_ELEMENTS)
