"""The kinds of notice about a case: written by the case's lifecycle, rendered and sent by notify, and named by the
WECHAT_TEMPLATE_<KIND> and SMS_TEMPLATE_<KIND> settings (which refuse a kind not here). A module of its own, with
no imports, so that the settings can read it below every layer."""

#: Every kind of notice about a case. The lifecycle's transitions name theirs; the scheduler
#: writes reminders; a retaken photo that answers the desk writes evidence_updated.
NOTICE_KINDS = ("joined", "ready", "booked", "rescheduled", "cancelled", "withdrawn", "confirmed", "checked_in",
                "completed", "no_show", "retake", "evidence_updated", "expired", "reminder")
#: What a person must read, by SMS if WeChat cannot carry it (booking, move, cancellation, confirmation,
#: retake request, reminder, outcome): the kinds an SMS_TEMPLATE_<KIND> may name.
MUST_READ = frozenset({"booked", "rescheduled", "cancelled", "withdrawn", "confirmed", "retake", "reminder",
                       "completed"})
