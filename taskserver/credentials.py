"""Which tokens let a device connect and register: fleet tokens from the settings, per-device tokens from the store."""

import logging

from taskserver import auth, logs
from taskserver.domain import ErrorCode
from taskserver.errors import NotFound, Unauthorized

log = logging.getLogger("taskserver")


class DeviceCredentials:
    """The rules: a device id with its own token registers only with it; otherwise a fleet token, if any are set."""

    def __init__(self, store, fleet_tokens, clock):
        self.store = store
        self.fleet_tokens = fleet_tokens
        self.clock = clock

    def check_connection(self, token):
        """A token presented when a connection opens must be a device token, when device tokens are required."""
        if token and self.fleet_tokens and not self._known(token):
            raise Unauthorized("设备令牌无效，连接被拒绝", ErrorCode.UNAUTHORIZED)

    def _known(self, token):
        return auth.token_in(token, self.fleet_tokens) or (
            self.store.device_id_for_token_hash(auth.hash_token(token)) is not None
        )

    def check_registration(self, device_id, token):
        """May ``token`` register ``device_id``? Raise ``UNAUTHORIZED`` if not."""
        bound = self.store.device_token_hash(device_id)
        if bound is not None:
            if not token or not auth.token_in(auth.hash_token(token), [bound]):
                raise Unauthorized(f"设备 {device_id} 需要其专属令牌", ErrorCode.UNAUTHORIZED)
        elif self.fleet_tokens and not auth.token_in(token, self.fleet_tokens):
            raise Unauthorized(
                "需要有效的设备令牌（连接的 auth.token 或 device_register 的 token）", ErrorCode.UNAUTHORIZED
            )

    def issue(self, device_id):
        """A new token bound to ``device_id`` (replacing any earlier one); only its hash is kept."""
        token = auth.new_token()
        self.store.set_device_token(device_id, auth.hash_token(token), self.clock())
        logs.event(log, "device token issued", device_id=device_id)
        return token

    def revoke(self, device_id):
        """Forget the device's own token, or 404 if it has none."""
        if not self.store.delete_device_token(device_id):
            raise NotFound(f"设备 {device_id} 没有专属令牌", ErrorCode.TOKEN_NOT_FOUND)
        logs.event(log, "device token revoked", device_id=device_id)
