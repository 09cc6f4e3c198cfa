"""A WSGI app that answers how many objects its worker has frozen out of the garbage collector."""

import gc


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(gc.get_freeze_count()).encode()]
