"""Log lines never carry a driver's phone, plate or openid in full."""

from __future__ import annotations

import logging

from accident_service.logs import PersonalDataFilter, mask_personal_data


def test_mask_phone_plate_openid():
    line = "driver oAbCdEfGhIjKlMnOpQrStUvWxYz12 phone 13800138000 plate 粤AD12345"
    masked = mask_personal_data(line)
    for secret in ("oAbCdEfGhIjKlMnOpQrStUvWxYz12", "13800138000", "粤AD12345"):
        assert secret not in masked
    assert "138****8000" in masked


def test_filter_masks_formatted_arguments(caplog):
    logger = logging.getLogger("test.pii")
    logger.addFilter(PersonalDataFilter())
    with caplog.at_level(logging.INFO, logger="test.pii"):
        logger.info("booked for %s", "13900139000")
    assert "13900139000" not in caplog.text and "139****9000" in caplog.text
