"""What an operator sets up in the WeChat and SMS consoles, as the sandbox sets it up in its emulators.

README ("Notices") asks a deployment for one WeChat template per must-read notice, each with the
same five keywords, and one approved SMS template per kind; this module is that setup written down
once, for the sandbox (and the tests that register templates "as README says").
"""

from __future__ import annotations

#: The keywords every notice template has, with the console's category types (notify/notices.py fills them).
NOTICE_TEMPLATE_KEYWORDS = {"character_string1": "character_string", "thing2": "thing", "thing3": "thing",
                            "time4": "time", "thing5": "thing"}
#: How a phone labels those keywords on the card (the console shows these names).
KEYWORD_LABELS = {"character_string1": "案件编号", "thing2": "事项", "thing3": "处理点", "time4": "时间",
                  "thing5": "说明"}
#: Notice kinds a template is configured for in the sandbox (WECHAT_TEMPLATE_<KIND>).
TEMPLATE_KINDS = ("booked", "rescheduled", "cancelled", "withdrawn", "confirmed", "retake", "reminder", "completed",
                  "expired", "no_show")
#: Must-read kinds with an SMS template (SMS_TEMPLATE_<KIND>); {1} {2} {3} are notices.sms_params: the case
#: number's last part, the date and the time (a retake's deadline, the visit's start, or when the case ended).
SMS_TEMPLATE_TEXTS = {
    "booked": "事故快处案件(尾号{1})已预约{2}{3}，请按时到处理点，详情见公众号。",
    "rescheduled": "事故快处案件(尾号{1})已改约至{2}{3}，详情见公众号。",
    "cancelled": "事故快处案件(尾号{1})原定{2}{3}的预约已取消，请在公众号重新预约。",
    "withdrawn": "事故快处案件(尾号{1})已于{2}{3}撤销，如需处理请在公众号重新报案。",
    "confirmed": "事故快处案件(尾号{1}){2}{3}的预约已由民警确认，请携带证件准时到场。",
    "retake": "事故快处案件(尾号{1})需补拍照片，请于{2}{3}前在公众号补拍。",
    "reminder": "事故快处案件(尾号{1})将于{2}{3}办理，请准时到处理点。",
    "completed": "事故快处案件(尾号{1})已于{2}{3}办结，结果见公众号。",
}


def template_id(kind: str) -> str:
    return f"SANDBOX-{kind.upper()}"


def sms_template_id(kind: str) -> str:
    return str(1_400_100 + sorted(SMS_TEMPLATE_TEXTS).index(kind))
