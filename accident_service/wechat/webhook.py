"""WeChat callback endpoint (placeholder until the gateway lands)."""

from flask import Blueprint

bp = Blueprint("wechat", __name__)
