"""The WeChat platform API: one client for every call (token included) and the shared access token."""
