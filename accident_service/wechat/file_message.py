"""A file a driver sends from the chat ("文件"), which wechatpy 1.8.18 does not know.

Drivers sometimes send a photo as a file (an original from the gallery, to
keep its full size): ``MsgType`` ``file`` with the file's ``MediaId`` and its
name in ``Title``. Registered with wechatpy's parser so it arrives like any
other message; the conversation treats it as a photo (the photo checks tell
a real image from anything else by its bytes, not its name).
"""

from __future__ import annotations

from wechatpy.fields import IntegerField, StringField
from wechatpy.messages import BaseMessage, register_message


@register_message("file")
class FileMessage(BaseMessage):
    type = "file"
    media_id = StringField("MediaId")
    title = StringField("Title")
    description = StringField("Description")
    file_md5 = StringField("FileMd5")
    file_size = IntegerField("FileTotalLen", 0)
