"""The runtime a console command works with: the app's, built once per invocation.

Under ``accident-service`` (a FlaskGroup) the app is created once by the group
(``create_app``: settings read, schema upgraded when AUTO_MIGRATE, runtime
built); commands take the runtime from it instead of building their own, so a
command migrates at most once and opens one engine. A command invoked outside
the group (a bare click group, a test's CliRunner) gets the same through a
ScriptInfo kept on its root context: still one app per invocation.
"""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import ScriptInfo

from accident_service.runtime import Runtime
from accident_service.web import current_runtime

_SCRIPT_INFO = "accident_service.script_info"
_CLOSE_REGISTERED = "accident_service.runtime_close_registered"


def command_runtime() -> Runtime:
    """The runtime of the app this command runs in; its engine is disposed when the command ends.

    Raises SettingsError (a bad setting, a database the settings name wrongly), or the driver's error for a
    database not reachable now.
    """
    ctx = click.get_current_context()
    root = ctx.find_root()
    if not current_app:
        info = ctx.find_object(ScriptInfo) or root.meta.get(_SCRIPT_INFO)
        if info is None:
            from accident_service import create_app

            info = root.meta[_SCRIPT_INFO] = ScriptInfo(create_app=lambda: create_app())
        ctx.with_resource(info.load_app().app_context())
    runtime = current_runtime()
    if not root.meta.get(_CLOSE_REGISTERED):
        root.meta[_CLOSE_REGISTERED] = True
        root.call_on_close(runtime.close)
    return runtime
