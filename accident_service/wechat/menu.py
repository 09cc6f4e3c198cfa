"""The official account's menu; the keys are the conversation's triggers."""

from accident_service.wechat.conversation import REPORT_KEYS, STATUS_KEYS

REPORT_KEY = next(iter(REPORT_KEYS))
STATUS_KEY = next(iter(STATUS_KEYS))

MENU = {
    "button": [
        {"type": "click", "name": "事故快处", "key": REPORT_KEY},
        {"type": "click", "name": "我的案件", "key": STATUS_KEY},
    ]
}
